"""Where a result came from: library versions and the git commit of the code that made it."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from pathlib import Path


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of sati, torch, transformers, numpy and Python."""
    import numpy
    import torch
    import transformers

    import sati

    return {
        "sati": sati.__version__,
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def git_commit() -> str:
    """The commit of the checkout ``sati`` runs from, with ``-dirty`` for uncommitted changes; ``unknown``
    for an installed package outside a git checkout."""
    try:
        repo = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_PACKAGES: dict[str, str] | None = None


def installed_packages() -> dict[str, str]:
    """Every installed distribution and its version (a lock of the environment), sorted by name;
    computed once per process."""
    global _PACKAGES
    if _PACKAGES is None:
        from importlib import metadata

        found = {}
        for dist in metadata.distributions():
            name = dist.metadata["Name"]
            if name:
                found[name] = dist.version
        _PACKAGES = dict(sorted(found.items(), key=lambda kv: kv[0].lower()))
    return _PACKAGES


def rerun_record(config: dict, data_checksum: str, commit: str) -> dict:
    """What it takes to train a run again: the resolved config (seed included), the data file's
    content checksum, the code's git commit and whether the tree was dirty, and the environment."""
    return {
        "config": config,
        "seed": config.get("seed"),
        "data_checksum": data_checksum,
        "git_commit": commit.removesuffix("-dirty"),
        "git_dirty": commit.endswith("-dirty"),
        "versions": versions(),
        "packages": installed_packages(),
    }
