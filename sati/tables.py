"""Tables for people: dict rows as Markdown or CSV, and the paper's results table (Markdown, LaTeX).

The paper table has one row per label (a condition such as ``noise σ=0.5``, or a variant such as
``no_til``) and the paper's columns; with several runs per row each cell is mean ± sample std. A metric
undefined for some run is ``n/a (k/S runs)``: never a mean over the others.
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


def _cells(runs: list[dict[str, float]], split: str, latex: bool, marks: dict[str, str]) -> list[str]:
    cells = []
    for _, key, scale in PAPER_COLUMNS:
        values = scale * np.array([r[f"{split}/{key}"] for r in runs])
        undefined = int((~np.isfinite(values)).sum())  # e.g. Pearson r of a constant prediction
        if undefined:
            cells.append(f"n/a ({undefined}/{len(values)} runs)" if len(values) > 1 else "n/a")
            continue
        digits = 3 if scale == 1 else 2
        cell = f"{values.mean():.{digits}f}"
        if len(values) > 1:
            cell += (r" $\pm$ " if latex else " ± ") + f"{values.std(ddof=1):.{digits}f}"
        cells.append(cell + marks.get(key, ""))
    return cells


def paper_markdown(
    rows: dict[str, list[dict[str, float]]],
    split: str,
    first_column: str | None = None,
    marks: dict[str, dict[str, str]] | None = None,
) -> str:
    """The paper's columns, one row per label; ``rows[label]`` holds each run's ``<split>/<metric>``;
    ``marks[label][metric]`` is appended to a cell (a significance mark)."""
    marks = marks or {}
    head = "| " + " | ".join([first_column or split] + [c for c, _, _ in PAPER_COLUMNS]) + " |"
    lines = [head, "|" + "---|" * (len(PAPER_COLUMNS) + 1)]
    lines += [
        "| " + " | ".join([label] + _cells(r, split, False, marks.get(label, {}))) + " |" for label, r in rows.items()
    ]
    return "\n".join(lines) + "\n"


_LATEX_SYMBOLS = {"σ": r"$\sigma$", "±": r"$\pm$", "Δ": r"$\Delta$", "α": r"$\alpha$", "×": r"$\times$"}
_LATEX_SYMBOLS |= {
    "−": "$-$",
    "≈": r"$\approx$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "½": r"$\frac{1}{2}$",
    "·": r"$\cdot$",
}


def latex_escape(text: str) -> str:
    """Text for LaTeX: special characters escaped, Greek letters and math symbols in math mode, backticks
    (Markdown code marks) dropped."""
    text = re.sub(r"([_%&#])", r"\\\1", text.replace("`", ""))
    return re.sub("|".join(_LATEX_SYMBOLS), lambda m: _LATEX_SYMBOLS[m.group(0)], text)


def _latex_table(head: list[str], body: list[list[str]], caption: str, note: str | None) -> str:
    """A booktabs ``table``: first column left-aligned, the rest centred; ``note`` (already LaTeX) below it."""
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "c" * (len(head) - 1) + "}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
        *[" & ".join(row) + r" \\" for row in body],
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if note:
        lines.append(r"\par\smallskip\begin{minipage}{\linewidth}\footnotesize " + note + r"\end{minipage}")
    lines += [rf"\caption{{{latex_escape(caption)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def paper_latex(
    rows: dict[str, list[dict[str, float]]],
    split: str,
    caption: str,
    first_column: str = "Condition",
    marks: dict[str, dict[str, str]] | None = None,
    note: str | None = None,
) -> str:
    """The same table as a booktabs LaTeX ``table``, with ``note`` (plain text) as its footnote."""
    marks = marks or {}
    body = [[latex_escape(label)] + _cells(r, split, True, marks.get(label, {})) for label, r in rows.items()]
    head = [first_column] + [c for c, _, _ in PAPER_COLUMNS]
    return _latex_table(head, body, caption, latex_escape(note) if note else None)


def rows_latex(rows: list[dict], caption: str, note: str | None = None) -> str:
    """Rows of dicts (keys in first-seen order, values shown as they are) as a booktabs LaTeX ``table``."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    body = [[latex_escape(_fmt(r.get(k, ""))) for k in keys] for r in rows]
    return _latex_table([latex_escape(k) for k in keys], body, caption, latex_escape(note) if note else None)
