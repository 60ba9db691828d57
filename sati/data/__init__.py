"""The training path's data: the dataset file format, splits in memory, tokens, loaders, generated data."""
