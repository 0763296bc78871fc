"""Prefix-length sensitivity: how much a method's main metric moves with its prefix length.

Input is one (task, backbone) slice of ``render.records_frame``. Methods without a prefix
axis (LoRA, full fine-tuning) have no curve and are left out of the score table; the plot
draws them as flat reference lines.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.report.stats import mean_ci, summarize

CURVE_COLUMNS = ["method", "prefix_length", "mean", "std", "n", "ci_low", "ci_high"]
SCORE_COLUMNS = ["method", "lengths", "best_length", "best_mean", "worst_mean", "spread", "std_across_lengths",
                 "seed_spread_mean", "seed_spread_ci_low", "seed_spread_ci_high", "seeds_all_lengths"]


def curves(df: pd.DataFrame) -> pd.DataFrame:
    """Metric vs prefix length, one row per (method, length): mean, std, n, 95% CI over seeds."""
    rows = []
    with_len = df[df["prefix_length"].notna()]
    for (method, length), g in sorted(with_len.groupby(["method", "prefix_length"]), key=lambda kv: kv[0]):
        s = summarize(g["main_score"])
        rows.append({"method": method, "prefix_length": int(length), "mean": s.mean, "std": s.std, "n": s.n,
                     "ci_low": s.ci_low, "ci_high": s.ci_high})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def per_seed_spread(df: pd.DataFrame, method: str) -> pd.Series:
    """For each seed that ran every one of the method's lengths: max - min of its scores
    across lengths. Seeds missing a length are dropped (a partial sweep understates it)."""
    g = df[(df["method"] == method) & df["prefix_length"].notna()]
    lengths = set(g["prefix_length"].dropna().astype(int))
    out = {}
    for seed, s in g.groupby("seed"):
        by_len = s.groupby(s["prefix_length"].astype(int))["main_score"].mean().dropna()
        if set(by_len.index) == lengths and len(lengths) >= 2:
            out[int(seed)] = float(by_len.max() - by_len.min())
    return pd.Series(out, dtype=float)


def scores(df: pd.DataFrame, higher_is_better: bool = True) -> pd.DataFrame:
    """One row per prefix method: spread (max - min of per-length means), std of the
    per-length means, best length, and the per-seed spread with its 95% t-interval.
    Lower spread = more stable. Needs at least two lengths; fewer gives NaN scores."""
    c = curves(df)
    rows = []
    for method, g in c.groupby("method", sort=True):
        means = g.set_index("prefix_length")["mean"].dropna()
        if means.empty:
            continue
        best = means.idxmax() if higher_is_better else means.idxmin()
        multi = len(means) >= 2
        seeds = per_seed_spread(df, method)
        lo, hi = mean_ci(seeds.to_numpy()) if len(seeds) else (math.nan, math.nan)
        rows.append({
            "method": method, "lengths": len(means), "best_length": int(best), "best_mean": float(means[best]),
            "worst_mean": float(means.min() if higher_is_better else means.max()),
            "spread": float(means.max() - means.min()) if multi else math.nan,
            "std_across_lengths": float(np.std(means.to_numpy(), ddof=1)) if multi else math.nan,
            "seed_spread_mean": float(seeds.mean()) if len(seeds) else math.nan,
            "seed_spread_ci_low": lo, "seed_spread_ci_high": hi, "seeds_all_lengths": len(seeds),
        })
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)
