"""Dataset file format, generated data, and batching."""
