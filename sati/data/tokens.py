"""Token ids of a split: tokenize once per split, or reuse the tokens ``sati data prepare`` stored.

Stored tokens are used for a split only when (1) the stored tokenizer fingerprint equals the
fingerprint of the tokenizer the model loads (the name does not matter: ``roberta-base`` and a local
copy of it match, a changed folder does not), and (2) the stored ids equal what ``tokenize`` would
give for ``data.max_text_tokens``: the same max length, or no stored sample truncated and none
longer than the configured budget. Otherwise the loader tokenizes at load, as before.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sati.data.h5format import list_tokens, read_tokens


@dataclass
class Tokens:
    """A split's texts tokenized once: ids [N, L] padded with ``pad_id``, lengths [N]."""

    ids: np.ndarray
    lengths: np.ndarray
    pad_id: int


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> Tokens:
    """Tokenize every text in one batched call (specials included, truncated to ``max_tokens``)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc = tokenizer(
        texts,
        add_special_tokens=True,
        truncation=True,
        max_length=max_tokens,
        padding="longest",
        return_tensors="np",
        return_attention_mask=True,
    )
    return Tokens(
        ids=enc["input_ids"].astype(np.int64), lengths=enc["attention_mask"].sum(1).astype(np.int64), pad_id=int(pad_id)
    )


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 (16 hex) of a tokenizer's vocabulary, rules and specials; call-time settings excluded."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation and padding are set by each call, not part of the tokenizer: hash without them.
        truncation, padding = backend.truncation, backend.padding
        backend.no_truncation()
        backend.no_padding()
        try:
            blob = backend.to_str()
        finally:
            if truncation:
                backend.enable_truncation(**truncation)
            if padding:
                backend.enable_padding(**padding)
    else:
        blob = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, tokenizer.pad_token_id, getattr(tokenizer, "do_lower_case", None)])
    return hashlib.sha256((blob + extra).encode()).hexdigest()[:16]


def stored_tokens(path: str | Path, split: str, fingerprint: str, max_tokens: int) -> Tokens | None:
    """The split's stored tokens if they equal ``tokenize(…, max_tokens)`` for this tokenizer, else None."""
    for info in list_tokens(path, split):
        if info.fingerprint != fingerprint:
            continue
        same_budget = info.max_length == max_tokens
        # Another budget gives the same ids only if nothing was cut and nothing exceeds the new budget.
        if not same_budget and (info.truncated or info.shape[1] > max_tokens):
            continue
        t = read_tokens(path, info)
        width = int(t.lengths.max())
        return Tokens(ids=t.ids[:, :width], lengths=t.lengths, pad_id=t.pad_id)
    return None
