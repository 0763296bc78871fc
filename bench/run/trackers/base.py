"""Experiment trackers (``prefix-bench run --tracker NAME``): each cell a run computes becomes
one tracker run named by its cell id, holding its per-step curve (loss, learning rate,
periodic evaluations, a method's step logs) and, at its last step, its row's numbers.

A cell is logged once its row is in the store, from that row and the curve file the worker
wrote beside it (bench/run/trackers/log.py), by a process of the tracker's own
(bench/run/trackers/sink.py), whatever the executor: a tracker cannot change a cell's id,
its training, its row or the memory a training process measures, and one that fails is a
warning, never a failed cell. A missing backend is a ConfigError (exit 2) naming the pip
package, raised before any cell trains (:func:`make_tracker`).
"""

from __future__ import annotations

import importlib.util
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from bench.core.config import ConfigError
from bench.core.record import ResultRecord
from bench.core.registry import Registry

EXTRA = "prefix-bench[trackers]"
# the record's fields logged as tags (what the run is), not as numbers
TAG_FIELDS = ("cell_id", "suite", "method", "task", "backbone", "prefix_length", "seed", "status", "role",
              "main_metric", "run_id", "precision", "device", "git_sha", "backbone_source")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_./ -]")  # what MLflow accepts in a key; TensorBoard takes it too


@dataclass(frozen=True)
class Point:
    """One scalar at one training step."""

    key: str
    step: int
    value: float


@dataclass(frozen=True)
class TrackedRun:
    """What a tracker logs for one cell: names, tags and scalars, all from its row and curve."""

    name: str  # the cell id
    experiment: str  # "prefix-bench/<suite>"
    ok: bool
    tags: dict[str, str]
    params: dict[str, str]  # the cell's training options
    points: tuple[Point, ...]


class Tracker(ABC):
    """Logs :class:`TrackedRun` s somewhere. ``uri`` is where (a folder, a tracking URI);
    :meth:`default_uri` gives it under the results folder when the user names none."""

    name: ClassVar[str] = ""
    package: ClassVar[str] = ""  # the pip package that provides ``module``
    module: ClassVar[str] = ""  # imported when the tracker is made

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @classmethod
    @abstractmethod
    def default_uri(cls, results_dir: Path) -> str:
        """Where runs go when the user gives no ``--tracker-uri``: under ``results_dir``."""

    @classmethod
    def check_installed(cls) -> None:
        """ConfigError naming the pip package when the backend cannot be imported."""
        try:
            found = importlib.util.find_spec(cls.module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ConfigError(f"--tracker {cls.name} needs the {cls.package!r} package, which is not installed: "
                              f"pip install {cls.package}  (or: pip install '{EXTRA}'); nothing was run")

    def load_backend(self) -> None:
        """Import the backend: only in the tracker's own process (bench/run/trackers/sink.py)."""
        importlib.import_module(self.module)

    def prepare(self, experiments: Iterable[str]) -> None:  # noqa: B027 (an optional hook)
        """Once in the driver, before any cell runs: create what workers log into, so that
        concurrent workers never race to create it (and an unusable store fails here)."""

    @abstractmethod
    def log(self, run: TrackedRun) -> None:
        """Log one cell's run."""


TRACKERS: Registry[type[Tracker]] = Registry("tracker", Tracker)


def make_tracker(name: str, uri: str = "", results_dir: Path | None = None) -> Tracker:
    """The tracker ``name`` logging to ``uri`` (default: its place under ``results_dir``); an
    unknown name or a missing backend package is a ConfigError."""
    if name not in TRACKERS:
        raise ConfigError(f"--tracker: {TRACKERS.unknown_message(name)}")
    cls = TRACKERS.get(name)
    cls.check_installed()
    if not uri:
        if results_dir is None:
            raise ConfigError(f"--tracker {name}: no --tracker-uri and no results folder to put its runs in")
        uri = cls.default_uri(Path(results_dir).resolve())
    return cls(uri)


def experiment_name(suite: str) -> str:
    return f"prefix-bench/{suite}"


def metric_key(*parts: str) -> str:
    """A tracker key from names that may come from a record (a task's metric names)."""
    return _KEY_UNSAFE.sub("_", "/".join(parts))[:250]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def tracked_run(record: ResultRecord, curve: dict[str, Any] | None, lr_at: Callable[[int], float] | None,
                params: dict[str, Any] | None = None) -> TrackedRun:
    """The run a tracker logs for ``record``: from its curve file's contents (``curve``, as
    ``bench/run/artefacts.save_curves`` writes it; None: a failed cell has none) every step's
    ``train/loss`` and ``train/lr`` (``lr_at(step)``, 1-based steps), each periodic evaluation
    (``eval/<main metric>``, or ``holdout/...`` when it scored the held-out slice) and each
    numeric method step log (``method/<key>``); then, at the last step, every finite number of
    the row (``row/<field>``, ``row/metrics/<name>``). Non-finite values are left out."""
    curve = curve or {}
    points: list[Point] = []
    losses = [v for v in curve.get("loss", []) if isinstance(v, int | float)]
    for step, loss in enumerate(losses, 1):
        if _finite(loss):
            points.append(Point("train/loss", step, float(loss)))
        if lr_at is not None:
            points.append(Point("train/lr", step, float(lr_at(step))))
    on = "holdout" if curve.get("evals_on") == "holdout" else "eval"
    for pair in curve.get("evals", []):
        if isinstance(pair, list | tuple) and len(pair) == 2 and isinstance(pair[0], int) and _finite(pair[1]):
            points.append(Point(metric_key(on, record.main_metric or "score"), pair[0], float(pair[1])))
    for log in curve.get("step_logs", []):
        step = log.get("step") if isinstance(log, dict) else None
        if isinstance(step, int):
            points += [Point(metric_key("method", str(k)), step, float(v)) for k, v in log.items()
                       if k != "step" and _finite(v)]
    last = len(losses) or record.train_steps
    for f in fields(record):
        value = getattr(record, f.name)
        if _finite(value) and f.name not in TAG_FIELDS and f.name != "schema_version":
            points.append(Point(metric_key("row", f.name), last, float(value)))
    points += [Point(metric_key("row", "metrics", str(k)), last, float(v)) for k, v in record.metrics.items()
               if _finite(v)]
    tags = {k: str(getattr(record, k)) for k in TAG_FIELDS}
    if record.error:
        tags["error"] = record.error[:500]
    return TrackedRun(name=record.cell_id, experiment=experiment_name(record.suite), ok=record.status == "ok",
                      tags=tags, params={str(k): str(v)[:500] for k, v in (params or {}).items()},
                      points=tuple(points))
