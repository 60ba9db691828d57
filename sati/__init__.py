"""SATI: semantic-guided multimodal sentiment decoding, with its search and promotion pipeline."""

__version__ = "0.1.0"
