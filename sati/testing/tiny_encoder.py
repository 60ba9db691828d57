"""Build a tiny RoBERTa and a byte-level BPE tokenizer offline, saved as a Hugging Face folder.

The folder loads through the same ``from_pretrained`` path users take with ``roberta-base``.
Used by the tests and by the benchmarks; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from sati.data.synth import NEGATIVE, NEUTRAL, POSITIVE


def _corpus(n: int = 3000) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(0)
    words = (
        list(POSITIVE)
        + list(NEGATIVE)
        + NEUTRAL
        + ["an", "one", "two", "three", "four", "five", "six", "seven", "eight"]
    )
    return [" ".join(rng.choice(words, size=rng.integers(3, 20))) for _ in range(n)]


def build_tiny_text_encoder(
    out_dir: str | Path, hidden: int = 32, layers: int = 2, heads: int = 2, max_tokens: int = 128, seed: int = 0
) -> Path:
    """Train a BPE tokenizer on generated sentences and save it with a random tiny RoBERTa whose
    weights are drawn from ``seed``."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _corpus(), vocab_size=600, min_frequency=2, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=max_tokens,
    )
    tokenizer.save_pretrained(out_dir)
    config = RobertaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_tokens + 2,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    RobertaModel(config).save_pretrained(out_dir)
    return out_dir
