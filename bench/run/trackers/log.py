"""The worker's side: after a cell's row is stored, log it with the run's tracker."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from bench.core.records import ResultRecord
from bench.core.safe_names import check_name
from bench.run.matrix import Cell
from bench.run.trackers.base import TRACKERS, tracked_run


def log_cell(tracker: str, uri: str, cell: Cell, record: ResultRecord, results_dir: str | Path) -> None:
    """Log ``record`` and its curve file (``RESULTS/curves/<cell id>.json``) with tracker
    ``tracker`` at ``uri`` (resolved by the driver: ``make_tracker``)."""
    path = Path(results_dir) / "curves" / f"{check_name('cell id', record.cell_id)}.json"
    curve = json.loads(path.read_text(encoding="utf-8")) if record.curve_path and path.is_file() else None
    cfg = cell.train_config
    params = {**{f"train.{k}": v for k, v in sorted(cell.train.items())},
              **{f"method.{k}": v for k, v in sorted(cell.method_args.items())}, "lr": record.lr or cfg.lr}
    lr_at = _schedule(cfg.warmup_ratio, cfg.train_steps, record.lr or cfg.lr or 0.0) if curve else None
    TRACKERS.get(tracker)(uri).log(tracked_run(record, curve, lr_at, params))


def _schedule(warmup_ratio: float, steps: int, lr: float) -> Callable[[int], float]:
    """The learning rate of training step ``s`` (1-based), read from the trainer's own
    schedule (the factor after s - 1 scheduler steps), so the logged curve cannot drift from it."""
    import torch

    from bench.run.trainer import linear_schedule

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    factor = linear_schedule(optimizer, math.ceil(warmup_ratio * steps), steps).lr_lambdas[0]
    return lambda step: lr * factor(step - 1)
