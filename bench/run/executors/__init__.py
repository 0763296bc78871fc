"""Executors: where cells run. Importing this package registers the built-in ones."""

from bench.run.executors import local, remote  # noqa: F401  (registration)
from bench.run.executors.base import EXECUTORS, Executor, make_executor, parse_options, threads_for
from bench.run.executors.local import LocalExecutor, SubprocessExecutor
from bench.run.job import CellJob, execute_cell, lost_cell

__all__ = ["EXECUTORS", "CellJob", "Executor", "LocalExecutor", "SubprocessExecutor", "execute_cell",
           "lost_cell", "make_executor", "parse_options", "threads_for"]
