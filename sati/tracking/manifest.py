"""The manifest of a registered model: the sha256 of every file of its logged model, kept where only
the registry's writers can change it, and checked before anything of the model is imported or
unpickled.

A logged model is code (the ``sati`` package, ``serving_model.py``), data that decides what the
code does (``best.pt`` with its embedded config, the text encoder's config and tokenizer) and
MLflow's own files (``MLmodel``, which names the loader module and the code folder; the environment
files). Whoever can write any of them decides what loading the model does, so the manifest covers
them all, and a loader refuses:

- a file that differs from the manifest, or a manifest file that is missing;
- a file the manifest does not list (a planted ``__pycache__/*.pyc``, ``.so`` or ``.py``): no
  bytecode is ever listed, the manifest is built from source files only;
- a link or anything else that is not a plain file.

Verified code is imported from source: the verified folder holds no bytecode, and
``no_bytecode_written`` keeps Python from writing any into it while the model loads, so no ``.pyc``
(planted, or left by an earlier load) stands in for a verified ``.py``.

Where it is kept: in the model version's tags, which take the registry's EDIT right to write (the
search's MLflow account is denied the registry and logged models). A tag value is limited (5000
characters on older MLflow stores), and the manifest of the ~100 files of a model is ~10 kB of JSON,
so its canonical JSON is split over ``sati.manifest.0``, ``sati.manifest.1``, ... and
``sati.manifest_sha256`` holds the sha256 of the whole JSON. The hash tag is written last: a version
whose registration stopped halfway has no hash and is refused, and parts that do not add up to the
hash are refused.

JSON: ``{"format": 1, "files": {"<path in the model>": "<sha256>", ...}, "text_encoder": "<name>"}``,
with ``text_encoder`` the checkpoint's ``model.text_encoder`` at registration: the only encoder the
checkpoint's config may name when the model is loaded (``check_text_encoder``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sati.pretrained import PRECOMPUTED
from sati.provenance import file_sha256
from sati.tracking import contract as c
from sati.tracking.store import TrackingError

FORMAT = 1
PART_CHARS = 5000  # the tag value limit of older MLflow stores
# Written by MLflow into every download of a ``models:/NAME/VERSION`` URI after the download (it
# replaces whatever the store holds under that name): the name and version it came from.
DOWNLOAD_NOTE = "registered_model_meta"


class ManifestError(TrackingError):
    """A registered model whose files or manifest do not match: it is not loaded."""


def is_bytecode(path: str) -> bool:
    """Whether a path in a model is compiled Python (never listed in a manifest)."""
    return "__pycache__" in path.split("/") or path.endswith((".pyc", ".pyo"))


def _files(model_dir: Path, source: str) -> Iterator[str]:
    """The model's files as relative POSIX paths; a link, or anything but a plain file or folder, is
    refused, naming it."""
    for folder, dirs, names in os.walk(model_dir):
        for name in sorted(dirs + names):
            path = Path(folder) / name
            rel = path.relative_to(model_dir).as_posix()
            if path.is_symlink():
                raise ManifestError(f"{source}: {rel} is a link; a registered model holds plain files only")
            if name in names and not path.is_file():
                raise ManifestError(f"{source}: {rel} is not a plain file")
            if name in names:
                yield rel


@dataclass(frozen=True)
class Manifest:
    """The sha256 of every file of a logged model, and the text encoder its checkpoint names."""

    files: dict[str, str]  # path in the model (POSIX) → sha256
    text_encoder: str

    def to_json(self) -> str:
        """The canonical JSON (sorted keys, no spaces): what ``sati.manifest_sha256`` is the hash of."""
        doc = {"format": FORMAT, "files": self.files, "text_encoder": self.text_encoder}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    def to_tags(self) -> dict[str, str]:
        """The version tags that hold it, the hash tag last (dicts keep their order)."""
        text = self.to_json()
        parts = [text[i : i + PART_CHARS] for i in range(0, len(text), PART_CHARS)]
        tags = {c.manifest_part_tag(i): part for i, part in enumerate(parts)}
        tags[c.MANIFEST_SHA256] = hashlib.sha256(text.encode()).hexdigest()
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str], source: str) -> Manifest:
        """The manifest a version's tags hold; refused, naming ``source``, when it has none or its parts
        do not add up to its hash."""
        recorded = tags.get(c.MANIFEST_SHA256)
        if not recorded:
            raise ManifestError(
                f"{source} has no file manifest ({c.MANIFEST_SHA256}): it was registered before sati recorded "
                "one, or its registration did not finish; its files cannot be verified, so it is not loaded "
                "(promote it again with this version of sati)"
            )
        parts, i = [], 0
        while c.manifest_part_tag(i) in tags:
            parts.append(tags[c.manifest_part_tag(i)])
            i += 1
        text = "".join(parts)
        if hashlib.sha256(text.encode()).hexdigest() != recorded:
            raise ManifestError(
                f"{source}: its manifest tags ({i} parts) do not hash to the recorded {c.MANIFEST_SHA256} "
                f"{recorded[:16]}…; refusing to load it"
            )
        try:
            doc = json.loads(text)
            files, encoder, form = doc["files"], doc["text_encoder"], doc["format"]
        except (ValueError, KeyError, TypeError):
            files = encoder = form = None
        if form != FORMAT or not isinstance(encoder, str) or not isinstance(files, dict):
            raise ManifestError(f"{source}: its manifest is not a sati manifest of format {FORMAT}")
        return cls({str(k): str(v) for k, v in files.items()}, encoder)


def build_manifest(model_dir: Path, text_encoder: str, source: str) -> Manifest:
    """The manifest of a downloaded model folder (MLflow's download note left out); a bytecode file in
    it is refused, naming it: it would be trusted at every later load."""
    files = {}
    for rel in _files(model_dir, source):
        if rel == DOWNLOAD_NOTE:
            continue
        if is_bytecode(rel):
            raise ManifestError(f"{source}: {rel} is compiled Python; a registered model holds source files only")
        files[rel] = file_sha256(model_dir / rel)
    return Manifest(files, text_encoder)


def verify_files(model_dir: Path, manifest: Manifest, source: str) -> None:
    """Check a downloaded model folder against its manifest; the first file that is not as registered
    (changed, missing, or not listed) is refused, naming it."""
    seen = set()
    for rel in _files(model_dir, source):
        if rel == DOWNLOAD_NOTE:
            continue
        expected = manifest.files.get(rel)
        if expected is None:
            what = "compiled Python" if is_bytecode(rel) else "a file"
            raise ManifestError(
                f"{source}: {rel} is {what} that is not in the model's manifest (added after registration); "
                "refusing to load the model"
            )
        actual = file_sha256(model_dir / rel)
        if actual != expected:
            raise ManifestError(
                f"{source}: {rel} changed after registration (sha256 {actual[:16]}…, the manifest records "
                f"{expected[:16]}…); refusing to load the model"
            )
        seen.add(rel)
    missing = sorted(set(manifest.files) - seen)
    if missing:
        raise ManifestError(f"{source}: {missing[0]} is in the model's manifest but missing; refusing to load it")


def check_text_encoder(
    manifest: Manifest, configured: str, encoder_folder: str | None, requirements: str, source: str
) -> None:
    """The text encoder a verified checkpoint's config names must be one the manifest covers: the one
    recorded at registration, whose config and tokenizer travel in the model (``encoder_folder``, the
    model's ``text_encoder`` artifact); a ``package:<module>`` one (whose frozen weights come from that
    package) must also be a pinned requirement of the model (``requirements``, its requirements.txt).
    Nothing is imported here."""
    if configured != manifest.text_encoder:
        raise ManifestError(
            f"{source}: its checkpoint names the text encoder {configured!r}, but its manifest records "
            f"{manifest.text_encoder!r}; refusing to load the model"
        )
    if configured == PRECOMPUTED:
        return
    if encoder_folder is None or f"{encoder_folder}/config.json" not in manifest.files:
        raise ManifestError(
            f"{source}: the config and tokenizer of its text encoder {configured!r} are not in the model's "
            "manifest; refusing to load the model"
        )
    if configured.startswith("package:"):
        from importlib.metadata import packages_distributions

        module = configured.split(":", 1)[1].split(".")[0]
        dists = {_dist_key(d) for d in packages_distributions().get(module, [])}
        pinned = {_dist_key(line.split("==")[0]) for line in requirements.splitlines() if "==" in line}
        if not dists & pinned:
            raise ManifestError(
                f"{source}: its text encoder {configured!r} is not a pinned requirement of the model "
                "(requirements.txt); refusing to load the model"
            )


def _dist_key(name: str) -> str:
    """A distribution name as pip compares them (case, ``_`` and ``.`` do not matter)."""
    return name.strip().lower().replace("_", "-").replace(".", "-")


@contextlib.contextmanager
def no_bytecode_written() -> Iterator[None]:
    """Python writes no ``.pyc`` while it lasts (process-wide): a verified model folder, which holds no
    bytecode (its manifest lists none and ``verify_files`` refuses any), stays so while its code is
    imported, so that code is compiled from its verified ``.py`` files, and no bytecode is left for a
    later load to trust."""
    saved = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = saved
