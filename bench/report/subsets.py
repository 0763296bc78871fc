"""Rows scored on part of the evaluation split: marked wherever their score is printed.

An accuracy on 200 of 872 examples is an estimate of the full-split figure with a wider
spread; a corpus-level metric on a subset (E2E's CIDEr weights n-grams by their IDF over
the evaluated corpus, NIST by their information in it) is a different quantity altogether:
the same outputs score CIDEr 2.32 on 20 MRs and 2.84 inside the 630-MR test set. Neither
may sit unmarked beside full-split numbers.
"""

from __future__ import annotations

import pandas as pd

MARK = "¶"  # in the Latin-1 range: pdflatex's utf8 input reads it


def subset_rows(df: pd.DataFrame) -> pd.Series:
    """True for rows that scored fewer examples than their evaluation split holds (rows
    from before the counts were recorded are unknown, so unmarked)."""
    if "eval_examples" not in df or "eval_split_size" not in df:
        return pd.Series(False, index=df.index)
    n = pd.to_numeric(df["eval_examples"], errors="coerce")
    total = pd.to_numeric(df["eval_split_size"], errors="coerce")
    return (n < total).fillna(False).astype(bool)


def mark(shown: str, rows: pd.DataFrame) -> str:
    return f"{shown}{MARK}" if shown and subset_rows(rows).any() else shown


def note(df: pd.DataFrame, corpus: bool) -> str:
    """The footnote for a table holding subset rows ("" when it holds none); ``corpus``: the
    task's metrics are corpus statistics (bench/core/task_facts.py)."""
    sub = df[subset_rows(df)]
    if sub.empty:
        return ""
    sizes = sorted({(int(a), int(b)) for a, b in zip(sub["eval_examples"], sub["eval_split_size"], strict=True)})
    counts = ", ".join(f"{a} of {b}" for a, b in sizes)
    what = ("its metrics are corpus statistics, so these scores are comparable to no full-split result"
            if corpus else "an estimate of the full-split score, not that score")
    return f"{MARK} scored on a subset of the evaluation split ({counts} examples): {what}."
