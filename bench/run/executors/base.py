"""Executors decide where cells run: in this process, one child process per cell, as Ray
tasks, or as Slurm array jobs through submitit. Each runs the same job (bench/run/job.py).
Adapters and curves are written by the worker under the results folder: with Ray or Slurm
across machines that folder must be on a shared filesystem."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from bench.core.config import ConfigError, check_fields
from bench.core.records import ResultRecord
from bench.core.registry import Registry
from bench.run.job import CellJob
from bench.run.matrix import Cell

Log = Callable[[str], None]
MAX_WORKERS = 256  # child processes at once: far above any machine this runs on


class Executor(ABC):
    """Runs cells and yields each cell's row as it finishes (in any order)."""

    name: ClassVar[str] = ""

    @dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def run(self, cells: Iterable[Cell], job: CellJob, log: Log) -> Iterator[ResultRecord]:
        """Execute every cell; yield its row once it is in the store. ``cells`` may be lazy
        (the runner claims each cell as it is drawn): draw one when it can start."""

    def threads_per_cell(self, threads: int) -> int:
        """Torch CPU threads each cell runs with; ``threads`` (--threads) when it is set. The
        runner pins this into the cells: it changes their bytes, so it is in their ids."""
        import torch

        return threads or torch.get_num_threads()  # in this process: its own setting

    def validate(self) -> None:  # noqa: B027 (an optional hook, not an abstract method)
        """Checks that need no model (importable backend, reachable options)."""

    def check_cells(self, cells: list[Cell]) -> None:  # noqa: B027 (an optional hook)
        """Refuse (ConfigError) cells this executor's options cannot run, before any runs."""


EXECUTORS: Registry[type[Executor]] = Registry("executor", Executor)


def make_executor(name: str, options: dict[str, Any] | None = None, where: str = "executor") -> Executor:
    """The executor ``name`` built from ``options`` (unknown keys and bad values: ConfigError)."""
    if name not in EXECUTORS:
        raise ConfigError(f"{where}: {EXECUTORS.unknown_message(name)}")
    cls = EXECUTORS.get(name)
    executor = cls(check_fields(cls.Config, dict(options or {}), f"{where} {name!r}"))
    executor.validate()
    return executor


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` strings from the command line; VALUE is read as a TOML value when it is
    one (``4``, ``true``, ``"gpu"``), else kept as a string."""
    import tomllib

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--executor-option {pair!r}: expected KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def require_package(module: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"executor needs the {package!r} package: pip install 'prefix-bench[distributed]'")


def threads_for(workers: int) -> int:
    """Torch threads per worker so concurrent workers do not oversubscribe this machine."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
