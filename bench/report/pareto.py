"""Pareto views: main metric against a cost (deployed adapter size, training throughput,
peak memory), with the non-dominated configurations marked.

A point is one (method, prefix length) configuration of one (task, backbone), averaged
over seeds. Dominance is the textbook definition (another point at least as good on both
axes and strictly better on one) with noise: "strictly better" must exceed the two points'
combined spread over seeds on that axis (sqrt of the sum of their variances; none where a
point has one seed). Throughput measured on a shared machine moves by more than many gaps
between methods, and a frontier drawn through that noise would rank nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bench.report.stats import summarize


@dataclass(frozen=True)
class Axis:
    column: str  # column of records_frame
    label: str
    higher_is_better: bool
    log: bool  # plot on a log scale (parameter counts span orders of magnitude)
    scale: float = 1.0  # the plot divides by this (bytes -> MiB)


AXES = (
    # what one ships (the folded prefix, not the MLP that trains it): a size view must not
    # charge prefix tuning for a network that is thrown away after training
    Axis("inference_bytes", "deployed adapter size (KiB)", higher_is_better=False, log=True, scale=1024),
    Axis("train_tokens_per_s", "train tokens/s", higher_is_better=True, log=False),
    Axis("peak_memory_bytes", "peak memory (MiB)", higher_is_better=False, log=False, scale=1024**2),
)
AXIS_NAMES = tuple(a.column for a in AXES)


def points(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, prefix_length): score mean/CI/n and the mean of each cost."""
    rows = []
    key = df["prefix_length"].astype(object).where(df["prefix_length"].notna(), None)
    for (method, length), g in df.groupby([df["method"], key], dropna=False):
        s = summarize(g["main_score"])
        row = {"method": method, "prefix_length": None if pd.isna(length) else int(length),
               "score": s.mean, "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n}
        row["score_std"] = s.std if s.n > 1 else 0.0
        for a in AXES:
            row[a.column] = float(g[a.column].mean())
            row[f"{a.column}_std"] = float(g[a.column].std(ddof=1)) if len(g) > 1 else 0.0
        rows.append(row)
    out = pd.DataFrame(rows, columns=["method", "prefix_length", "score", "ci_low", "ci_high", "n", *AXIS_NAMES,
                                      "score_std", *(f"{a}_std" for a in AXIS_NAMES)])
    return out.sort_values(["method", "prefix_length"], na_position="last", ignore_index=True)


def frontier(pts: pd.DataFrame, axis: Axis, higher_is_better: bool = True) -> pd.Series:
    """Boolean mask: True where no other point dominates on (score, axis). A point without a
    score or without the cost (unknown, e.g. records older than the figure) is not on it."""
    score = pts["score"] if higher_is_better else -pts["score"]
    cost = pts[axis.column] if axis.higher_is_better else -pts[axis.column]
    zeros = pd.Series(0.0, index=pts.index)
    score_sd = pts["score_std"].fillna(0.0) if "score_std" in pts else zeros
    cost_sd = pts[f"{axis.column}_std"].fillna(0.0) if f"{axis.column}_std" in pts else zeros
    mask = []
    for i in range(len(pts)):
        if pd.isna(score.iloc[i]) or pd.isna(cost.iloc[i]):
            mask.append(False)
            continue
        ge = (score >= score.iloc[i]) & (cost >= cost.iloc[i])
        score_noise = (score_sd ** 2 + score_sd.iloc[i] ** 2) ** 0.5
        cost_noise = (cost_sd ** 2 + cost_sd.iloc[i] ** 2) ** 0.5
        gt = (score - score.iloc[i] > score_noise) | (cost - cost.iloc[i] > cost_noise)
        mask.append(not bool((ge & gt).any()))
    return pd.Series(mask, index=pts.index)


def table(df: pd.DataFrame, higher_is_better: bool = True) -> pd.DataFrame:
    """Points plus one ``pareto_<axis>`` boolean column per cost axis."""
    pts = points(df)
    for a in AXES:
        pts[f"pareto_{a.column}"] = frontier(pts, a, higher_is_better)
    return pts
