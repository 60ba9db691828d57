"""A trained SATI model ready to use: one checkpoint, its config and tokenizer, predictions.

``SATIPredictor`` is what ``sati evaluate``, ``sati predict`` and the registered MLflow model
(``sati/serving_model.py``) run. It needs the checkpoint and, for a Hugging Face text encoder, a
folder (or hub name) with the encoder's ``config.json`` and tokenizer: the encoder's weights come
from the checkpoint, so a registered model does not carry them twice.

DataFrame interface (the registered model's signature)::

    input   id (str, optional), text (str), audio [T, D_a], video [T, D_v] (nested lists, one T per row);
            text_features [T_t, D_t] instead of text for models trained on precomputed text features
    output  id, prediction (float, [-3, 3]), class7 (int, -3..3), sentiment (the class's name)

Rows carry no absence: a modality the model's training data lacked in every sample (recorded in the
checkpoint) is absent from every row, every other one present. A non-finite feature, or one that drives
the prediction to a non-finite value, is refused with a ``DataError`` that names the row and the column.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from sati.checkpoint import load_checkpoint, restore_model
from sati.config import PipelineConfig, from_dict
from sati.data.dataset import SplitDataset
from sati.data.h5format import DataError, SplitArrays, with_absent
from sati.data.tokens import tokenize
from sati.devices import resolve_device
from sati.model import SATI
from sati.pretrained import PRECOMPUTED, load_tokenizer
from sati.trainer import predict

if TYPE_CHECKING:
    import pandas as pd

SENTIMENT_CLASSES = {
    -3: "highly negative",
    -2: "negative",
    -1: "weakly negative",
    0: "neutral",
    1: "weakly positive",
    2: "positive",
    3: "highly positive",
}


def seven_class(pred: np.ndarray) -> np.ndarray:
    """Scores [N] → the paper's Acc-7 classes [N] (clipped to [-3, 3], rounded half to even); a NaN score has
    no class (``ValueError``), ±inf clips to ±3."""
    pred = np.asarray(pred, dtype=np.float64)
    if np.isnan(pred).any():
        raise ValueError(f"scores at positions {np.flatnonzero(np.isnan(pred))[:10].tolist()} are NaN: no class")
    return np.round(np.clip(pred, -3, 3)).astype(np.int64)


FEATURE_COLUMNS = ("audio", "video", "text_features")


def check_finite_inputs(arrays: SplitArrays) -> None:
    """Refuse (``DataError``) a sample with a NaN or infinite feature, naming its row id and column."""
    for column in FEATURE_COLUMNS:
        x = getattr(arrays, column)
        if x is None:
            continue
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(1))
        if len(bad):
            rows = ", ".join(arrays.ids[i] for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise DataError(
                f"row {rows}: column {column} has non-finite values (NaN, ±inf, or beyond float32's ±3.4e38); "
                "expected finite numbers"
            )


def check_finite_predictions(arrays: SplitArrays, scores: np.ndarray) -> None:
    """Refuse (``DataError``) finite inputs that drove a prediction to NaN or ±inf, naming the row and its
    feature column of largest magnitude (a value too large for the model's float32 arithmetic)."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if not len(bad):
        return
    i = bad[0]
    largest = {c: float(np.abs(getattr(arrays, c)[i]).max()) for c in FEATURE_COLUMNS if getattr(arrays, c) is not None}
    column = max(largest, key=largest.get)
    more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
    raise DataError(
        f"row {arrays.ids[i]}: column {column} has values up to {largest[column]:.3g} in magnitude, out of the "
        f"range the model computes in: its prediction is not finite{more}; expected features on the scale of "
        "the training data"
    )


def input_dims(state: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(audio, video, text feature) dims of a SATI state dict, read from its input projections."""
    try:
        return tuple(int(state[f"project.{i}.0.weight"].shape[1]) for i in (1, 2, 0))
    except KeyError as err:
        raise ValueError(f"not a SATI state dict (no {err.args[0]})") from None


class SATIPredictor:
    """A SATI checkpoint loaded for inference.

    Args:
        checkpoint: a ``best.pt`` written by the trainer (read with ``weights_only``).
        text_encoder: folder with the text encoder's config and tokenizer; default: the name in
            the checkpoint's config (a hub name, local folder or ``package:<module>``).
        device: ``auto``, ``cpu``, ``cuda``...; precision follows the training config.
    """

    def __init__(self, checkpoint: str | Path, text_encoder: str | None = None, device: str = "auto"):
        ckpt = load_checkpoint(checkpoint, map_location="cpu")
        cfg = from_dict(ckpt["config"], f"{checkpoint} (config)")
        self.frozen: dict | None = ckpt["frozen"]  # the frozen encoder's identity; its weights are not in the file
        # ``text_encoder`` gives the tokenizer and config; a frozen encoder's weights come from it when it
        # has them, else from the encoder the checkpoint names (an installed package, say)
        if (
            text_encoder
            and cfg.model.text_encoder != PRECOMPUTED
            and (self.frozen is None or has_weights(text_encoder))
        ):
            cfg = cfg.replace({"model.text_encoder": str(text_encoder)}, source=f"{checkpoint} (text encoder)")
        self.cfg: PipelineConfig = cfg
        self.epoch: int = int(ckpt["epoch"])
        self.metrics: dict[str, float] = dict(ckpt["metrics"])
        self.audio_dim, self.video_dim, text_dim = input_dims(ckpt["model"])
        self.precomputed = cfg.model.text_encoder == PRECOMPUTED
        self.precision: str | None = ckpt["precision"]  # what it was trained in: bf16 or fp32 (None: not recorded)
        self.missing_modalities: tuple[str, ...] = tuple(ckpt["missing_modalities"])  # absent from every input row
        self.device = resolve_device(device)
        self.model = SATI(
            cfg.model,
            cfg.ablation,
            self.audio_dim,
            self.video_dim,
            text_feature_dim=text_dim if self.precomputed else 0,
            pretrained_text=self.frozen is not None,  # frozen weights come from the encoder, the rest from the file
        )
        restore_model(self.model, ckpt, checkpoint, built_from=cfg.model.text_encoder)
        self.model.to(self.device).eval()
        self.tokenizer = None if self.precomputed else load_tokenizer(text_encoder or cfg.model.text_encoder)

    def predict_arrays(self, arrays: SplitArrays, batch_size: int | None = None) -> np.ndarray:
        """Scores [N] (float32, finite) for a split read from a dataset file (or built by ``frame_to_arrays``);
        a non-finite input or prediction is refused naming its row and column (``DataError``)."""
        if arrays.audio.shape[-1] != self.audio_dim or arrays.video.shape[-1] != self.video_dim:
            raise DataError(
                f"the model expects audio {self.audio_dim}-d and video {self.video_dim}-d features, "
                f"got {arrays.audio.shape[-1]}-d and {arrays.video.shape[-1]}-d"
            )
        check_finite_inputs(arrays)
        tokens = None
        if not self.precomputed:
            tokens = tokenize(self.tokenizer, arrays.text, self.cfg.data.max_text_tokens)
        elif arrays.text_features is None:
            raise DataError("the model reads precomputed text features, but the input has none (text_features)")
        dataset = SplitDataset(arrays, tokens)
        scores = predict(
            self.model, dataset, batch_size or self.cfg.train.eval_batch_size, self.device, self.cfg.train.precision
        )
        check_finite_predictions(arrays, scores)
        return scores

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The DataFrame interface (module docstring): one output row per input row, same order."""
        arrays = frame_to_arrays(frame, self.audio_dim, self.video_dim, self.precomputed)
        return predictions_frame(arrays.ids, self.predict_arrays(with_absent(arrays, self.missing_modalities)))


def predictions_frame(ids: list[str], scores: np.ndarray) -> pd.DataFrame:
    """id, prediction, class7, sentiment as a pandas DataFrame."""
    import pandas as pd

    classes = seven_class(scores)
    return pd.DataFrame(
        {
            "id": [str(i) for i in ids],
            "prediction": np.asarray(scores, dtype=np.float64),
            "class7": classes,
            "sentiment": [SENTIMENT_CLASSES[int(c)] for c in classes],
        }
    )


def _matrix(value, row: str, column: str, dim: int) -> np.ndarray:
    try:
        with np.errstate(over="ignore"):  # beyond float32: ±inf, refused with the row's name (check_finite_inputs)
            x = np.asarray(
                value if not isinstance(value, np.ndarray) or value.dtype != object else list(value), dtype=np.float32
            )
    except (TypeError, ValueError):
        raise DataError(f"input row {row}: column '{column}' must be a [T, {dim}] list of lists of numbers") from None
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] < 1:
        raise DataError(
            f"input row {row}: column '{column}' must be a [T, {dim}] list of lists with T >= 1, "
            f"got shape {list(x.shape)}"
        )
    return x


def frame_to_arrays(frame: pd.DataFrame, audio_dim: int, video_dim: int, precomputed: bool = False) -> SplitArrays:
    """A DataFrame of raw samples → a ``SplitArrays`` padded to the longest row (labels are 0)."""
    needed = ["audio", "video", "text_features" if precomputed else "text"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"input is missing column(s) {', '.join(missing)}; expected {', '.join(needed)} (and id)")
    n = len(frame)
    if n == 0:
        raise DataError("input has no rows")
    ids = [str(i) for i in frame["id"]] if "id" in frame.columns else [str(i) for i in range(n)]
    audio = [_matrix(a, ids[i], "audio", audio_dim) for i, a in enumerate(frame["audio"])]
    video = [_matrix(v, ids[i], "video", video_dim) for i, v in enumerate(frame["video"])]
    lengths = np.array([len(a) for a in audio], dtype=np.int64)
    for i, (a, v) in enumerate(zip(audio, video)):
        if len(a) != len(v):
            raise DataError(
                f"input row {ids[i]}: audio has {len(a)} steps but video has {len(v)}; they share one time axis"
            )

    def pad(rows: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((n, max(len(r) for r in rows), rows[0].shape[1]), dtype=np.float32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    text_features = text_lengths = None
    if precomputed:
        feats = [np.asarray(list(t), dtype=np.float32) for t in frame["text_features"]]
        text_features, text_lengths = pad(feats), np.array([len(t) for t in feats], dtype=np.int64)
    text = [str(t) for t in frame["text"]] if "text" in frame.columns else [""] * n
    return SplitArrays(
        ids=ids,
        text=text,
        labels=np.zeros(n, dtype=np.float32),
        lengths=lengths,
        audio=pad(audio),
        video=pad(video),
        text_features=text_features,
        text_lengths=text_lengths,
    )


def arrays_to_frame(arrays: SplitArrays, limit: int | None = None) -> pd.DataFrame:
    """The first ``limit`` samples of a split as the model's input DataFrame (e.g. an input example)."""
    import pandas as pd

    n = len(arrays) if limit is None else min(limit, len(arrays))
    cols = {
        "id": arrays.ids[:n],
        "text": arrays.text[:n],
        "audio": [arrays.audio[i, : arrays.lengths[i]].astype(np.float64).tolist() for i in range(n)],
        "video": [arrays.video[i, : arrays.lengths[i]].astype(np.float64).tolist() for i in range(n)],
    }
    if arrays.text_features is not None:
        cols["text_features"] = [
            arrays.text_features[i, : arrays.text_lengths[i]].astype(np.float64).tolist() for i in range(n)
        ]
    return pd.DataFrame(cols)


def has_weights(folder: str | Path) -> bool:
    """Whether a Hugging Face model folder holds weights (not only its config and tokenizer)."""
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    return any((Path(folder) / n).is_file() for n in names)


def export_text_encoder(name: str, out_dir: str | Path, weights: bool = False) -> Path:
    """Write the text encoder's ``config.json`` and tokenizer files to ``out_dir``, and its pretrained
    weights too with ``weights`` (a checkpoint that leaves frozen encoder weights out needs them)."""
    from transformers import AutoConfig, AutoModel

    from sati.pretrained import resolve_text_encoder

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = resolve_text_encoder(name)
    if weights:
        AutoModel.from_pretrained(path).save_pretrained(out)
    else:
        AutoConfig.from_pretrained(path).save_pretrained(out)
    load_tokenizer(name).save_pretrained(out)
    return out
