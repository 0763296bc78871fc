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


def _train(r: ResultRecord) -> dict:
    train = r.config.get("train") if isinstance(r.config, dict) else None
    return train if isinstance(train, dict) else {}


def budget_line(rows: list[ResultRecord]) -> str:
    """The training budget the rows ran under and whether they used it up: where a suite caps
    steps or subsamples the training split, the table must say so, and a run stopped by the
    step cap while still improving on its held-out slice is not a converged number."""
    trains = [t for t in (_train(r) for r in rows) if t]
    if not trains:  # rows that do not say how they trained (hand-made, or too old)
        return ""
    steps = _values(t.get("train_steps") for t in trains)
    batch = _values(t.get("batch_size") for t in trains)
    limits = {t.get("train_limit") for t in trains}
    data = ("the whole training split" if limits <= {None} else
            f"at most {_values(limits)} training examples")
    held = {t.get("holdout") for t in trains} - {None, 0}
    seen = {t.get("train_steps", 0) * t.get("batch_size", 0) for t in trains
            if all(isinstance(t.get(k), int) and not isinstance(t.get(k), bool) for k in ("train_steps", "batch_size"))}
    size = f" ({next(iter(seen)):,} examples)" if len(seen) == 1 and len(trains) == len(rows) else ""
    text = f"Trained for at most {steps} steps of {batch}{size} drawn from {data}"
    if held:
        text += f", a share {_values(held)} of them held out for early stopping and the learning-rate search"
    stopped = [r.plateaued for r in rows if r.plateaued is not None]
    if stopped:
        capped = len(stopped) - sum(bool(p) for p in stopped)
        text += (f"; {sum(bool(p) for p in stopped)} of {len(stopped)} runs plateaued (early stopping)"
                 + (f", {capped} reached the step cap still improving" if capped else ""))
    else:
        text += "; no early stopping (a fixed number of steps)"
    return text + "."
