"""Pre-flight: what a search needs from the Ray cluster, checked after Ray is up and before the MLflow
parent run, the study or any trial exists (``sati search``, ``--resume``, ``--extend``; ``--check`` alone).

1. **Resources**: one trial's ``search.resources`` fit on at least one alive node; how many fit at
   once. A request that fits nowhere is refused at once, naming the key and what the nodes have;
   with ``search.resource_wait_s`` the search first asks the autoscaler for such a node and waits.
2. **Data on every node**: a task pinned to each alive node finds ``data.path`` there with the
   driver's content checksum.
3. **Shared storage**: with a local ``search.storage_path`` and several nodes, a token file the driver
   writes must be readable on every node.
4. **Text encoder**: every node can load the tokenizer and the encoder's config (a folder, a
   ``package:`` encoder, or a hub name in the node's cache when ``HF_HUB_OFFLINE`` is set).

Each check prints one line: ✓ and what it found, or ✗ and the reason.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sati import storage
from sati.config import ConfigError, PipelineConfig
from sati.pretrained import PRECOMPUTED

TOKEN_FILE = ".sati-preflight-{}"


class PreflightError(ConfigError):
    """The cluster cannot run the search as configured; nothing was started."""


@dataclass(frozen=True)
class Node:
    node_id: str
    address: str
    cpus: float
    gpus: float

    @property
    def label(self) -> str:
        return f"node {self.node_id[:12]} ({self.address})"


def alive_nodes() -> list[Node]:
    import ray

    return [
        Node(
            n["NodeID"],
            n.get("NodeManagerAddress", "?"),
            n["Resources"].get("CPU", 0.0),
            n["Resources"].get("GPU", 0.0),
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]


def trials_at_once(nodes: list[Node], cpu: float, gpu: float) -> int:
    """How many trials of ``cpu`` CPUs and ``gpu`` GPUs fit on ``nodes`` at the same time."""
    total = 0
    for n in nodes:
        by_cpu = int(n.cpus // cpu + 1e-9) if cpu > 0 else 10**6
        by_gpu = int(n.gpus // gpu + 1e-9) if gpu > 0 else 10**6
        total += min(by_cpu, by_gpu) if min(by_cpu, by_gpu) < 10**6 else 0
    return total


def check_resources(cfg: PipelineConfig, embedded: bool, console: Callable[[str], None]) -> list[Node]:
    """Item 1 of the module docstring; returns the alive nodes."""
    r, s = cfg.search.resources, cfg.search
    nodes = alive_nodes()
    fits = trials_at_once(nodes, r.cpu, r.gpu)
    if not fits and not embedded and s.resource_wait_s:
        from ray.autoscaler.sdk import request_resources

        console(f"… waiting up to {s.resource_wait_s:g} s for a node with {r.cpu:g} CPU and {r.gpu:g} GPU (autoscaler)")
        request_resources(bundles=[{"CPU": r.cpu, **({"GPU": r.gpu} if r.gpu else {})}])
        deadline = time.time() + s.resource_wait_s
        while not fits and time.time() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.time())))
            nodes = alive_nodes()
            fits = trials_at_once(nodes, r.cpu, r.gpu)
    if not fits:
        have = "; ".join(f"{n.label}: {n.cpus:g} CPU, {n.gpus:g} GPU" for n in nodes) or "no alive node"
        where = "this machine" if embedded else "the cluster"
        hint = "" if embedded else " (a cluster that starts nodes on demand: set search.resource_wait_s)"
        raise PreflightError(
            f"search.resources = {{cpu: {r.cpu:g}, gpu: {r.gpu:g}}} fits on no node of {where} ({have}); "
            f"lower search.resources or add nodes that have them{hint}"
        )
    console(
        f"✓ resources: a trial takes {r.cpu:g} CPU and {r.gpu:g} GPU; {fits} fit at once on {len(nodes)} node(s) "
        f"(search.max_concurrent = {s.max_concurrent})"
    )
    return nodes


def _node_probe(data_path: str, text_encoder: str, token: tuple[str, str] | None) -> dict[str, Any]:
    """Runs on one node: the data file's content checksum, the shared-storage token, the encoder."""
    import os
    import socket

    out: dict[str, Any] = {"host": socket.gethostname(), "offline": os.environ.get("HF_HUB_OFFLINE", "")}
    try:
        from sati.data.h5format import verify_checksum

        out["data"] = verify_checksum(data_path) if Path(data_path).exists() else None
        if out["data"] is None:
            out["data_error"] = "not found"
    except Exception as err:
        out["data"], out["data_error"] = None, f"{type(err).__name__}: {err}"
    if token is not None:
        path, value = token
        try:
            fs, p = storage.filesystem(path)
            with fs.open_input_stream(p) as f:
                out["token"] = f.read().decode() == value
        except Exception:
            out["token"] = False
    if text_encoder != PRECOMPUTED:
        try:
            from transformers import AutoConfig

            from sati.pretrained import load_tokenizer, resolve_text_encoder

            load_tokenizer(text_encoder)
            AutoConfig.from_pretrained(resolve_text_encoder(text_encoder))
            out["encoder"] = None
        except Exception as err:
            out["encoder"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    return out


def probe_nodes(nodes: list[Node], cfg: PipelineConfig, token: tuple[str, str] | None) -> dict[str, dict]:
    """``_node_probe`` as a Ray task pinned to each node (0 CPUs: it runs on a head without CPUs too)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_node_probe)
    refs = {
        n.node_id: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote(
            cfg.data.path, cfg.model.text_encoder, token
        )
        for n in nodes
    }
    return {node_id: ray.get(ref, timeout=300) for node_id, ref in refs.items()}


def run_preflight(cfg: PipelineConfig, embedded: bool, console: Callable[[str], None] = print) -> None:
    """Every check in the module docstring; raises ``PreflightError`` naming the first that fails."""
    from sati.data.h5format import verify_checksum

    started = time.perf_counter()
    nodes = check_resources(cfg, embedded, console)
    expected = verify_checksum(cfg.data.path)
    token = None
    if len(nodes) > 1 and not storage.is_uri(cfg.search.storage_path):
        value = secrets.token_hex(16)
        path = storage.join(cfg.search.storage_path, TOKEN_FILE.format(value[:8]))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(value)
        token = (path, value)
    try:  # the embedded Ray is this machine: probe it here, without a Ray task
        found = (
            {nodes[0].node_id: _node_probe(cfg.data.path, cfg.model.text_encoder, token)}
            if embedded
            else (probe_nodes(nodes, cfg, token))
        )
    finally:
        if token is not None:
            Path(token[0]).unlink(missing_ok=True)
    failures = []
    by_id = {n.node_id: n for n in nodes}

    bad = {i: f for i, f in found.items() if f.get("data") != expected}
    if bad:
        why = "; ".join(
            f"{by_id[i].label}: {f.get('data_error') or 'different contents (checksum ' + str(f['data'])[:12] + '…)'}"
            for i, f in bad.items()
        )
        failures.append(f"data.path = {cfg.data.path} is not the same file on every node ({why})")
    else:
        console(f"✓ data: {cfg.data.path} on all {len(nodes)} node(s), checksum {expected[:12]}…")

    if token is not None:
        blind = [by_id[i].label for i, f in found.items() if not f.get("token")]
        if blind:
            failures.append(
                f"search.storage_path = {cfg.search.storage_path} is not shared: {', '.join(blind)} cannot see "
                "what the driver writes there; use s3:// or gs:// storage, or a mount shared by every node"
            )
        else:
            console(f"✓ storage: {cfg.search.storage_path} is shared by all {len(nodes)} nodes")
    else:
        where = "object storage" if storage.is_uri(cfg.search.storage_path) else "one node"
        console(f"✓ storage: {cfg.search.storage_path} ({where})")

    if cfg.model.text_encoder != PRECOMPUTED:
        missing = {i: f["encoder"] for i, f in found.items() if f.get("encoder")}
        if missing:
            why = "; ".join(f"{by_id[i].label}: {e}" for i, e in missing.items())
            failures.append(f"model.text_encoder = {cfg.model.text_encoder!r} cannot be loaded on every node ({why})")
        else:
            console(f"✓ text encoder: {cfg.model.text_encoder} loads on all {len(nodes)} node(s)")
    for failure in failures:
        console(f"✗ {failure}")
    if failures:
        raise PreflightError(failures[0] + (f" (and {len(failures) - 1} more above)" if len(failures) > 1 else ""))
    console(f"pre-flight passed in {time.perf_counter() - started:.1f} s")
