"""Start or join Ray, for every caller (search, resume, confirmation), in one place.

``ray_session(None)`` starts a private local Ray for the block and stops it after; it binds to
127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which Ray reads when it is imported, so this
module imports Ray lazily). ``ray_session(address)`` joins a running cluster and leaves it running.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None = None) -> Iterator[bool]:
    """Ray for the ``with`` block; yields True when this call started it (and will stop it)."""
    if not address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the compact CLIReporter table
    import ray

    if ray.is_initialized():
        yield False
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        started = False
    else:
        # "local": always a new instance, never a cluster that `ray start` left on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        yield started
    finally:
        if started:
            ray.shutdown()
