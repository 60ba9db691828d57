"""The error every dataset reader raises for a file or input that cannot be used as it is."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset file or input that cannot be used as it is; the message names the file and the key."""
