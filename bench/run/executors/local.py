"""Cells in this process, or each in a fresh child process that dies with the driver
(bench/run/orphans.py) and ignores Ctrl-C, which the driver handles for it."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

from bench.core.config import ConfigError, positive
from bench.core.records import ResultRecord
from bench.run.executors.base import EXECUTORS, MAX_WORKERS, Executor, Log, threads_for
from bench.run.job import CellJob, execute_cell, execute_pack, lost_cell
from bench.run.matrix import Cell

MAX_PACK = 64  # cells in one pass


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """Cells one after another in this process (backbones and data loaded once, shared).
    ``isolate = true`` runs each cell in a fresh child process instead: the per-cell peak
    RSS is then the cell's own, and a cell killed by the OOM killer becomes a failed row.
    ``pack = K`` trains up to K compatible cells in one pass (bench/run/packed.py); with
    ``isolate`` a pack shares one child process."""

    name = "local"

    @dataclass(frozen=True)
    class Config:
        isolate: bool = field(default=False, metadata={"help": "one fresh child process per cell"})
        workers: int = field(default=1, metadata={"help": "child processes at once (isolate only)"})
        pack: int = field(default=1, metadata={
            "help": "train up to this many cells in one pass where they differ only in seed, lr and "
                    "prefix length of a packable method on a backbone without dropout (bench/run/packed.py)"})

        def __post_init__(self) -> None:
            positive("workers", self.workers)
            positive("pack", self.pack)
            if self.pack > MAX_PACK:
                raise ConfigError(f"pack {self.pack} is above {MAX_PACK}, the largest allowed: a pack's batch "
                                  "holds every packed cell's batch at once, activations included")
            if self.workers > MAX_WORKERS:  # each child loads its own backbone
                raise ConfigError(f"workers {self.workers} is above {MAX_WORKERS}, the largest allowed: every "
                                  "child process loads its own copy of the backbone")
            if self.workers > 1 and not self.isolate:
                raise ConfigError("workers > 1 needs isolate = true (one process runs one cell at a time)")

    def threads_per_cell(self, threads: int) -> int:
        if self.config.isolate:  # concurrent children share this machine's cores
            return threads or threads_for(self.config.workers)
        return super().threads_per_cell(threads)

    def run(self, cells: Iterable[Cell], job: CellJob, log: Log) -> Iterator[ResultRecord]:
        from bench.run.packed import packs

        size = self.config.pack
        if job.reproducible and size > 1:
            log("reproducible mode: cells train alone (a packed cell's bits would depend on its pack)")
            size = 1
        groups = packs(cells, size)
        if job.reproducible and not self.config.isolate:
            # the pinned kernels need a process that has run none yet
            log("reproducible mode: each cell runs in a fresh child process")
            yield from _run_children(groups, dataclasses.replace(job, threads=self.threads_per_cell(job.threads),
                                                                 isolated=True), 1)
            return
        if not self.config.isolate:
            for group in groups:
                yield from execute_pack(group, job, log)
            return
        job = dataclasses.replace(job, threads=self.threads_per_cell(job.threads), isolated=True)
        yield from _run_children(groups, job, self.config.workers)


@EXECUTORS.register("subprocess")
class SubprocessExecutor(LocalExecutor):
    """Shorthand for ``local`` with ``isolate = true``."""

    name = "subprocess"

    @dataclass(frozen=True)
    class Config(LocalExecutor.Config):
        isolate: bool = field(default=True, metadata={"help": "always true for this executor"})

        def __post_init__(self) -> None:
            if not self.isolate:
                raise ConfigError("the subprocess executor always isolates cells; use 'local' to run in-process")
            super().__post_init__()


def _child(cells: list[Cell], job: CellJob, conn: Any, parent: int) -> None:
    import signal

    from bench.run import orphans

    orphans.die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited already; the driver stops us
    orphans.no_shared_semaphores()
    records = execute_pack(cells, job) if len(cells) > 1 else [execute_cell(cells[0], job)]
    conn.send(records)
    conn.close()


def _run_children(groups: Iterable[list[Cell]], job: CellJob, workers: int) -> Iterator[ResultRecord]:
    """One fresh child process per group of cells (a pack, or one cell)."""
    from bench.measure import provenance
    from bench.run import orphans

    # spawn, not fork: a forked child inherits the parent's peak RSS (and its torch threads)
    ctx = multiprocessing.get_context("spawn")
    pending: Iterator[list[Cell]] | None = iter(groups)
    running: dict[Any, tuple[list[Cell], Any, str]] = {}  # process -> (cells, receiving end, started)
    try:
        while pending or running:
            while pending and len(running) < workers:
                cells = next(pending, None)
                if cells is None:
                    pending = None
                    break
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, args=(cells, job, send, os.getpid()), daemon=True)
                with orphans.sigint_ignored():
                    proc.start()
                send.close()
                running[proc] = (cells, recv, provenance.now())
            if not running:
                break
            wait([p.sentinel for p in running] + [r for _, r, _ in running.values()])
            for proc in list(running):
                cells, recv, started = running[proc]
                records = None
                if recv.poll():
                    try:
                        records = recv.recv()
                    except EOFError:
                        records = None
                if records is None and proc.is_alive():
                    continue
                proc.join()
                recv.close()
                del running[proc]
                if records is None:
                    code = proc.exitcode
                    why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    records = [lost_cell(cell, job, f"worker process died ({why}; out of memory?)", started)
                               for cell in cells]
                yield from records
    finally:
        for proc in running:
            proc.kill()
            proc.join()
