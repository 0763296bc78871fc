"""The driver's side of tracking: every row this run stores, with its curve file, becomes a
:class:`TrackedRun` handed to the tracker's process. The driver receives every row from every
executor, and the curve files are in the results folder (shared with remote workers)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from bench.core.records import ResultRecord
from bench.core.safe_names import check_name
from bench.run.matrix import Cell
from bench.run.trackers.base import TrackedRun, experiment_name, make_tracker, tracked_run
from bench.run.trackers.sink import TrackerSink


class CellTracking:
    """Made before anything runs (a missing backend: ConfigError); :meth:`start` starts the
    tracker's process for the cells to run, :meth:`row` logs one stored row, :meth:`close` ends it."""

    def __init__(self, name: str, uri: str, results_dir: Path, log: Callable[[str], None]) -> None:
        self.tracker = make_tracker(name, uri, results_dir)
        self.results_dir, self.log = Path(results_dir), log
        self.cells: dict[str, Cell] = {}
        self.sink: TrackerSink | None = None

    def start(self, cells: list[Cell]) -> None:
        self.cells = {c.id: c for c in cells}
        if cells:
            self.sink = TrackerSink(self.tracker, self.log)
            self.sink.prepare(experiment_name(c.suite) for c in cells)
            self.log(f"tracking each cell with {self.tracker.name} at {self.tracker.uri}")

    def row(self, record: ResultRecord) -> None:
        cell = self.cells.get(record.cell_id)
        if self.sink is None or cell is None:
            return
        try:
            run = tracked_cell(cell, record, self.results_dir)
        except Exception as err:  # an unreadable curve file: the row is stored, say so and go on
            self.log(f"--tracker {self.tracker.name} could not read cell {record.cell_id} "
                     f"({type(err).__name__}: {err}); its row is stored")
            return
        self.sink.log(run)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()


def tracked_cell(cell: Cell, record: ResultRecord, results_dir: Path) -> TrackedRun:
    """``record`` and its curve file (``RESULTS/curves/<cell id>.json``) as a tracker run."""
    path = results_dir / "curves" / f"{check_name('cell id', record.cell_id)}.json"
    curve = json.loads(path.read_text(encoding="utf-8")) if record.curve_path and path.is_file() else None
    cfg = cell.train_config
    lr = record.lr or cfg.lr or 0.0
    params = {**{f"train.{k}": v for k, v in sorted(cell.train.items())},
              **{f"method.{k}": v for k, v in sorted(cell.method_args.items())}, "lr": lr}
    lr_at = _schedule(cfg.warmup_ratio, cfg.train_steps, lr) if curve else None
    return tracked_run(record, curve, lr_at, params)


def _schedule(warmup_ratio: float, steps: int, lr: float) -> Callable[[int], float]:
    """The learning rate of training step ``s`` (1-based), read from the trainer's own
    schedule (the factor after s - 1 scheduler steps), so the logged curve cannot drift from it."""
    import torch

    from bench.run.trainer import linear_schedule

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    factor = linear_schedule(optimizer, math.ceil(warmup_ratio * steps), steps).lr_lambdas[0]
    return lambda step: lr * factor(step - 1)
