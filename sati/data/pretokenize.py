"""Tokenize once at prepare time; reuse the stored tokens at load time when they are exactly right.

Stored tokens are used for a split only when (1) the stored tokenizer fingerprint equals the
fingerprint of the tokenizer the model loads (the name does not matter: ``roberta-base`` and a local
copy of it match, a changed folder does not), and (2) the stored ids equal what ``tokenize`` would
give for ``data.max_text_tokens``: the same max length, or no stored sample truncated and none
longer than the configured budget. Otherwise the loader tokenizes at load, as before.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from sati.data.dataset import Tokens, tokenize
from sati.data.h5format import StoredTokens, list_tokens, read_tokens


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
