"""Replay: recorded learning curves drive the real searcher and scheduler on simulated time."""
