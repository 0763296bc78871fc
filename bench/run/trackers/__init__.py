"""Experiment trackers (``run --tracker``); importing this package registers the built-in
ones. It imports no backend and no torch: the tracker's own process (sink.py) imports it."""

from bench.run.trackers import mlflow_tracker, tensorboard_tracker  # noqa: F401  (registration)
from bench.run.trackers.base import TRACKERS, Point, TrackedRun, Tracker, make_tracker, tracked_run

__all__ = ["TRACKERS", "Point", "TrackedRun", "Tracker", "make_tracker", "tracked_run"]
