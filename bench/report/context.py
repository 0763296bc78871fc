"""What produced a table, said on the table: suite, commit (and whether the tree was dirty),
dates, device, precision, backbone and data sources; and a banner where a backbone has
random weights (such numbers prove plumbing, never accuracy)."""

from __future__ import annotations

from collections.abc import Iterable

from bench.core.records import ResultRecord

RANDOM_BANNER = ("⚠ random-weight backbone(s) {names}: these numbers prove that the pipeline runs, "
                 "never how well a method works.")
MAX_SHOWN = 3  # values per field before "and N more"


def _values(values: Iterable[object]) -> str:
    seen = sorted({str(v) for v in values if v not in (None, "")})
    if not seen:
        return "unknown"
    shown = ", ".join(seen[:MAX_SHOWN])
    return shown + (f" and {len(seen) - MAX_SHOWN} more" if len(seen) > MAX_SHOWN else "")


def _commit(r: ResultRecord) -> str:
    sha = str(r.git_sha or "")[:10] or "unknown"
    return sha + (" (dirty)" if r.git_dirty else "")


def _source(text: object) -> str:
    """A source without the machine's folders: ``local:/x/y/model`` -> ``local:model``."""
    kind, sep, where = str(text or "").partition(":")
    if not sep:
        return kind
    return f"{kind}:{where.rstrip('/').rsplit('/', 1)[-1]}" if kind == "local" else f"{kind}:{where}"


def _data(text: object) -> str:
    parts = [p.partition("=")[2] or p for p in str(text or "").split()]
    return " ".join(_source(p) for p in parts)


def context_line(rows: list[ResultRecord]) -> str:
    """One line naming what made ``rows`` (those a table aggregates)."""
    if not rows:
        return ""
    dates = sorted(str(r.finished_at or r.started_at or "")[:10] for r in rows if r.finished_at or r.started_at)
    when = (dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}") if dates else "unknown"
    precision = _values(getattr(r, "precision", "") or "fp32" for r in rows)
    return (f"Made by suite {_values(r.suite for r in rows)} at commit {_values(_commit(r) for r in rows)}, "
            f"{when}, on {_values(r.device for r in rows)}, precision {precision}; backbone "
            f"{_values(_source(r.backbone_source) for r in rows)}; data {_values(_data(r.data_source) for r in rows)}.")


def random_banner(rows: list[ResultRecord]) -> str:
    names = sorted({str(r.backbone) for r in rows if str(r.backbone_source or "").startswith("random:")
                    or str(r.backbone).startswith("tiny-")})
    return RANDOM_BANNER.format(names=", ".join(names)) if names else ""
