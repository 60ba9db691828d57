"""``sati data prepare``: read another tool's files, check them, tokenize once, write one dataset file."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sati.data.h5format import StoredTokens, check_feature_dims, write_dataset
from sati.data.tokens import tokenize, tokenizer_fingerprint
from sati.ingest.checks import check_dataset
from sati.ingest.readers import read_source
from sati.ingest.readers.common import Source
from sati.provenance import file_sha256

# Reader options and the formats that take them (anything else is refused, not ignored).
OPTION_FORMATS = {
    "text_csv": ("sdk",),
    "folds": ("sdk",),
    "drop_missing_text": ("sdk",),
    "audio_dim": ("sdk", "csv"),
    "video_dim": ("sdk", "csv"),
    "pool_unaligned": ("mmsa",),
}
OPTION_FLAGS = {
    "text_csv": "--text",
    "folds": "--folds",
    "drop_missing_text": "--drop-missing-text",
    "audio_dim": "--audio-dim",
    "video_dim": "--video-dim",
    "pool_unaligned": "--pool-unaligned",
}


@dataclass
class Prepared:
    path: Path
    checksum: str
    source: Source
    tokens: dict[str, list[StoredTokens]]


def prepare_dataset(
    kind: str,
    path: str | Path,
    out: str | Path,
    *,
    tokenizer: str | None = None,
    max_text_tokens: int = 50,
    name: str | None = None,
    expect_audio_dim: int | None = None,
    expect_video_dim: int | None = None,
    log: Callable[[str], None] = print,
    **options,
) -> Prepared:
    """Read ``path`` as ``kind`` (``options`` per ``OPTION_FORMATS``), check, tokenize, write ``out``."""
    for key, value in options.items():
        if value not in (None, False) and kind not in OPTION_FORMATS[key]:
            raise ValueError(f"{OPTION_FLAGS[key]} applies to --from {' / '.join(OPTION_FORMATS[key])}, not {kind}")
    started = time.perf_counter()
    source = read_source(kind, path, **{k: v for k, v in options.items() if v not in (None, False)})
    check_dataset(source.splits, str(path))
    train = source.splits["train"]
    check_feature_dims(
        str(path),
        train.audio.shape[-1],
        train.video.shape[-1],
        expect_audio=expect_audio_dim,
        expect_video=expect_video_dim,
    )
    for note in source.notes:
        log(f"  {note}")

    tokens: dict[str, list[StoredTokens]] = {}
    if tokenizer:
        from sati.pretrained import load_tokenizer

        tok = load_tokenizer(tokenizer)
        fingerprint = tokenizer_fingerprint(tok)
        for split, s in source.splits.items():
            tokens[split] = [pretokenize(tok, tokenizer, s.text, max_text_tokens, fingerprint)]
            t = tokens[split][0]
            log(
                f"  tokenized {split} with {tokenizer}: {len(s)} texts, max {max_text_tokens} tokens, "
                f"{t.truncated} truncated"
            )

    provenance = {
        **source.provenance,
        "input": str(Path(path).resolve()),
        "input_sha256": {str(p): file_sha256(p) for p in source.inputs},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "notes": source.notes,
        "tokenizers": [tokenizer] if tokenizer else [],
    }
    checksum = write_dataset(
        out,
        source.splits,
        name=name or source.name,
        provenance=provenance,
        missing_modalities=source.missing_modalities,
        tokens=tokens,
    )
    counts = ", ".join(f"{k} {len(v)}" for k, v in source.splits.items())
    log(
        f"wrote {out}: {counts}; audio {train.audio.shape[-1]}-d, video {train.video.shape[-1]}-d"
        + (f" (missing: {', '.join(source.missing_modalities)})" if source.missing_modalities else "")
        + f"; sha256 {checksum[:16]}… in {time.perf_counter() - started:.1f} s"
    )
    return Prepared(Path(out), checksum, source, tokens)


def pretokenize(
    tokenizer, name: str, texts: list[str], max_tokens: int, fingerprint: str | None = None
) -> StoredTokens:
    """Tokenize ``texts`` as the loader would (``tokenize``) and count the samples it truncates."""
    tokens = tokenize(tokenizer, texts, max_tokens)
    # Only a text that fills the budget may have been cut: tokenize those again with one more slot.
    full = np.flatnonzero(tokens.lengths >= max_tokens)
    truncated = (
        int((tokenize(tokenizer, [texts[i] for i in full], max_tokens + 1).lengths > max_tokens).sum())
        if len(full)
        else 0
    )
    return StoredTokens(
        tokenizer=name,
        fingerprint=fingerprint or tokenizer_fingerprint(tokenizer),
        max_length=max_tokens,
        pad_id=tokens.pad_id,
        truncated=truncated,
        ids=tokens.ids,
        lengths=tokens.lengths,
    )
