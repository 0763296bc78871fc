"""Experiment trackers (``run --tracker``); importing this package registers the built-in
ones, which import their backends only when used."""

from bench.run.trackers import mlflow_tracker, tensorboard_tracker  # noqa: F401  (registration)
from bench.run.trackers.base import TRACKERS, Point, TrackedRun, Tracker, make_tracker, tracked_run
from bench.run.trackers.log import log_cell

__all__ = ["TRACKERS", "Point", "TrackedRun", "Tracker", "log_cell", "make_tracker", "tracked_run"]
