"""What counts as a usable run: the one rule the runner, the tables and ``compare`` share.

A run is usable when its record says ``ok`` and its main score is a finite number. A NaN
or infinite score is a failed run, not an ok one with a missing value: the statistics drop
NaN as "no value", so such a run would vanish from every table without a word. The runner
records it as failed (keeping its metrics); readers apply the same rule to ok rows with a
non-finite score written by older versions or edited by hand. A record with no main score
at all (None) is not failed here; the runner refuses it when it builds the record.
"""

from __future__ import annotations

import math

from bench.core.records import ResultRecord

FAILED = "failed"  # the record says so (any status other than ok)
NON_FINITE = "non-finite"  # the record says ok, but its main score is NaN, inf or not a number


def score_problem(metric: str, score: object) -> str:
    """Why ``score`` is no usable main score; '' when it is a finite number or None."""
    if score is None:
        return ""
    if isinstance(score, bool):
        return f"main score {metric or '?'} = {score} is not a number"
    try:
        value = float(score)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"main score {metric or '?'} = {str(score)[:40]!r} is not a number"
    return "" if math.isfinite(value) else f"main score {metric or '?'} = {value} is not a finite number"


def failure(r: ResultRecord) -> tuple[str, str] | None:
    """None for a usable run; else (kind, error), kind ``FAILED`` or ``NON_FINITE``."""
    if r.status != "ok":
        return FAILED, str(r.error or f"status {str(r.status)[:40]!r}")
    problem = score_problem(r.main_metric, r.main_score)
    return (NON_FINITE, f"recorded ok, but its {problem}") if problem else None
