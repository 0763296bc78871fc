"""Statistics over seeds: summaries with confidence intervals of the mean, and a paired
comparison of two methods on matched cells. Pure functions of numbers; deterministic
(the permutation test draws from a fixed seed, so rendered tables are reproducible).

Intervals are Student's t (scipy.stats ``t``): a benchmark has 2-5 seeds, and a percentile
bootstrap over that few points cannot reach beyond them (over 3 seeds it lies inside their
range, covering the true mean far less than 95% of the time). The paired p-value is a sign-flip
permutation test (scipy.stats ``permutation_test``), exact for small n. Only the small-sample
edge cases (n < 2, zero spread) are handled here, because scipy answers them with NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

CONFIDENCE = 0.95
N_RESAMPLES = 9999
SEED = 0
# the keys on which two methods' runs are paired: same task, backbone, length and seed
PAIR_KEYS = ("task", "backbone", "prefix_length", "seed")
# Fewer pairs than this give no interval and no p-value: one difference has no spread, and
# flipping its sign is as extreme as itself, so a test of it would print p = 1.000 whatever
# the difference was.
MIN_PAIRS = 2


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof=1; 0 for n=1), n and a 95% t-interval of the mean."""

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float

    def contains(self, value: float) -> bool:
        return self.ci_low <= value <= self.ci_high


@dataclass(frozen=True)
class PairedResult:
    """A - B over matched pairs: mean difference, its t-interval, and a two-sided
    sign-flip permutation p-value (H0: the differences are symmetric around 0). With fewer
    than ``MIN_PAIRS`` pairs the CI and p-value are NaN: there is no test (``tested``)."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def tested(self) -> bool:
        return self.n >= MIN_PAIRS


def _clean(values: Iterable[float | None]) -> np.ndarray:
    out = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return np.asarray(out, dtype=float)


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student's t interval of the mean: mean -/+ t(n-1) * s / sqrt(n). n=1 or zero spread:
    the interval collapses to the value (no evidence of spread; tables print n beside it)."""
    x = _clean(values)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1 or np.ptp(x) == 0:
        return float(x.mean()), float(x.mean())
    lo, hi = sps.t.interval(confidence, df=x.size - 1, loc=float(x.mean()), scale=float(sps.sem(x)))
    return float(lo), float(hi)


def summarize(values: Iterable[float | None]) -> Summary:
    x = _clean(values)
    if x.size == 0:
        return Summary(math.nan, math.nan, 0, math.nan, math.nan)
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    lo, hi = mean_ci(x)
    return Summary(float(x.mean()), std, int(x.size), lo, hi)


def paired_test(a: Sequence[float], b: Sequence[float], n_resamples: int = N_RESAMPLES,
                seed: int = SEED) -> PairedResult:
    """Compare matched samples ``a[i]`` vs ``b[i]`` (same cell, two methods).

    The p-value is a paired permutation test (each pair's labels swapped at random),
    exact when 2**n <= n_resamples. Identical samples give p = 1. Fewer than ``MIN_PAIRS``
    pairs: the mean difference only, CI and p-value NaN (no test).
    """
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.shape != xb.shape:
        raise ValueError(f"paired samples need equal lengths, got {xa.size} and {xb.size}")
    keep = ~(np.isnan(xa) | np.isnan(xb))
    xa, xb = xa[keep], xb[keep]
    n = int(xa.size)
    if n == 0:
        return PairedResult(0, math.nan, math.nan, math.nan, math.nan)
    d = xa - xb
    if n < MIN_PAIRS:
        return PairedResult(n, float(d.mean()), math.nan, math.nan, math.nan)
    lo, hi = mean_ci(d)
    if np.all(d == 0):
        p = 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = sps.permutation_test((xa, xb), lambda x, y: np.mean(x - y), permutation_type="samples",
                                       n_resamples=n_resamples, alternative="two-sided",
                                       rng=np.random.default_rng(seed))
        p = float(min(1.0, res.pvalue))
    return PairedResult(n, float(d.mean()), lo, hi, p)


def _key_text(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def matched_pairs(df: pd.DataFrame, method_a: str, method_b: str, keys: Sequence[str] = PAIR_KEYS,
                  value: str = "main_score") -> pd.DataFrame:
    """Rows of ``df`` (one per run) joined on ``keys``: columns keys + ``a`` and ``b``.
    A missing prefix length (methods with no prefix axis) matches only another missing one."""
    cols = list(keys)

    def side(method: str) -> pd.DataFrame:
        g = df[df["method"] == method][cols + [value]].copy()
        for k in cols:  # NaN never equals NaN in a merge key, and 5.0 should meet 5: key by text
            g[k] = g[k].map(_key_text)
        return g.groupby(cols, dropna=False, as_index=False)[value].mean()

    merged = side(method_a).merge(side(method_b), on=cols, suffixes=("_a", "_b"))
    return merged.rename(columns={f"{value}_a": "a", f"{value}_b": "b"})


def compare_methods(df: pd.DataFrame, method_a: str, method_b: str,
                    keys: Sequence[str] = PAIR_KEYS) -> PairedResult:
    pairs = matched_pairs(df, method_a, method_b, keys)
    return paired_test(pairs["a"].to_numpy(), pairs["b"].to_numpy())


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
