"""Tables for people: dict rows as Markdown or CSV, and the paper's results table (Markdown, LaTeX).

The paper table has one row per label (a condition such as ``noise σ=0.5``, or a variant such as
``no_til``) and the paper's columns; with several runs per row each cell is mean ± sample std.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

# (column title, metric key, scale): accuracies and F1 in %, as the paper prints them
PAPER_COLUMNS = (
    ("MAE", "mae", 1),
    ("Corr", "corr", 1),
    ("Acc-2 has0", "acc2_has0", 100),
    ("Acc-2 non0", "acc2_non0", 100),
    ("F1 has0", "f1_has0", 100),
    ("F1 non0", "f1_non0", 100),
    ("Acc-7", "acc7", 100),
    ("Acc-5", "acc5", 100),
)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def rows_markdown(rows: list[dict]) -> str:
    """Rows of dicts (keys in first-seen order) as a Markdown table; floats to 4 significant digits."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return (
        "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
        + "".join("| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |\n" for r in rows)
    )  # fmt: skip


def rows_csv(rows: list[dict]) -> str:
    """Rows of dicts as CSV (keys in first-seen order; values are plain, without commas)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return ",".join(keys) + "\n" + "".join(",".join(str(r.get(k, "")) for k in keys) + "\n" for r in rows)


def _cells(runs: list[dict[str, float]], split: str, latex: bool) -> list[str]:
    cells = []
    for _, key, scale in PAPER_COLUMNS:
        values = scale * np.array([r[f"{split}/{key}"] for r in runs])
        digits = 3 if scale == 1 else 2
        cell = f"{values.mean():.{digits}f}"
        if len(values) > 1:
            cell += (r" $\pm$ " if latex else " ± ") + f"{values.std(ddof=1):.{digits}f}"
        cells.append(cell)
    return cells


def paper_markdown(rows: dict[str, list[dict[str, float]]], split: str, first_column: str | None = None) -> str:
    """The paper's columns, one row per label; ``rows[label]`` holds each run's ``<split>/<metric>``."""
    head = "| " + " | ".join([first_column or split] + [c for c, _, _ in PAPER_COLUMNS]) + " |"
    lines = [head, "|" + "---|" * (len(PAPER_COLUMNS) + 1)]
    lines += ["| " + " | ".join([label] + _cells(r, split, False)) + " |" for label, r in rows.items()]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    return re.sub(r"([_%&#])", r"\\\1", text).replace("σ", r"$\sigma$").replace("±", r"$\pm$")


def paper_latex(
    rows: dict[str, list[dict[str, float]]], split: str, caption: str, first_column: str = "Condition"
) -> str:
    """The same table as a booktabs LaTeX ``table``."""
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "c" * len(PAPER_COLUMNS) + "}",
        r"\toprule",
        " & ".join([first_column] + [c for c, _, _ in PAPER_COLUMNS]) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join([latex_escape(label)] + _cells(r, split, True)) + r" \\" for label, r in rows.items()]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{latex_escape(caption)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"
