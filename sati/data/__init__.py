"""Dataset file format, readers of other tools' files, generated data, and batching."""
