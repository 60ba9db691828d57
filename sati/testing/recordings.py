"""Hand-made recordings (``sati.replay.recording``) for tests and benchmarks: given curves, no training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sati.replay.recording import HP_PREFIX, config_id, space_to_meta, write_recording
from sati.search.space import load_space


def write_hand_made_recording(
    path: Path,
    space_path: Path,
    configs: dict[int, dict[str, Any]],
    curves: dict[int, list[float]],
    epoch_time_s: dict[int, float] | None = None,
    metric: str = "valid/mae",
    mode: str = "min",
) -> Path:
    """A recording at ``path`` of trial ``n`` = ``configs[n]`` with ``metric`` = ``curves[n]`` per epoch,
    each epoch ``epoch_time_s[n]`` seconds (10 s by default) on 1 CPU, every trial run to the end."""
    space = load_space(space_path)
    max_t = max(len(c) for c in curves.values())
    rows = []
    for n, curve in curves.items():
        common = {
            "trial_id": f"hand{n:03d}",
            "trial_seq": n,
            "config_id": config_id({k: configs[n].get(k) for k in space.keys}),
            **{HP_PREFIX + k: configs[n].get(k) for k in space.keys},
            "cpus": 1.0,
            "gpus": 0.0,
            "final_status": "completed",
            "censored": False,
        }
        dt = (epoch_time_s or {}).get(n, 10.0)
        for e, value in enumerate(curve, 1):
            rows.append({**common, "epoch": e, metric: value, "epoch_time_s": dt, "cum_time_s": e * dt})
    meta = {"metric": metric, "mode": mode, "max_t": max_t, "space": space_to_meta(space), "command": "hand-made"}
    write_recording(path, rows, meta)
    return path
