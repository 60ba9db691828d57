"""Hyperparameter search: spaces (space.py), Ray Tune (tune.py), orchestration (runner.py)."""
