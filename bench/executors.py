"""Executors decide where cells run: in this process, one child process per cell, as Ray
tasks, or as Slurm array jobs through submitit.

Every executor runs the same job, :func:`execute_cell`: train and evaluate one cell, turn
any exception into a ``failed`` row, append the row to the store and return it. Workers
append directly (``append_record`` is flock + O_APPEND + fsync, safe with many writers) so
that a finished cell is on disk the moment it finishes, even when the driver dies: Slurm
jobs outlive their driver, and a driver killed mid-matrix loses nothing a worker finished.
Workers also return the row so the driver can log and count. Only when a worker dies
without writing anything (killed, out of memory, node lost) does the driver append the
failed row, so a crash is still data and ``--retry-failed`` finds it.

A worker computes its cell under the cell's run lock and appends only while the cell has
no ``ok`` row (bench/claims.py), so a worker left over from a dead driver and the worker of
the next run never both record one cell. Child processes die with the driver
(bench/orphans.py) and ignore Ctrl-C, which the driver handles for them.

Adapters and curves are written by the worker under the results folder: with Ray or Slurm
across machines that folder must be on a shared filesystem (it always is on a typical
Slurm cluster; a local Ray cluster shares this machine's disk).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, ClassVar

from bench.config import ConfigError, check_fields, positive
from bench.matrix import Cell
from bench.records import ResultRecord, append_record, finished_row, read_records
from bench.registry import Registry
from tasks import DataSettings

Log = Callable[[str], None]
MAX_WORKERS = 256  # child processes at once: far above any machine this runs on


@dataclass(frozen=True)
class CellJob:
    """What a worker needs besides the cell; small and picklable."""

    data: DataSettings
    device: str  # a spec resolved on the worker ("auto", "cpu", "cuda", "cuda:1")
    results_dir: str
    threads: int = 0  # torch CPU threads in the worker (0: leave torch's default)
    isolated: bool = False  # the worker process runs only this cell: its peak RSS is the cell's
    plugins: tuple[str, ...] = ()  # modules the user named with --plugin, imported in the worker too
    reproducible: bool = False  # bench/reproducible.py: pinned kernels; needs a fresh worker process
    # the driver run, stamped on every row it writes: tells a row this run produced from one
    # it found in the store (finished by another run, or by a worker of a dead driver)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])


def execute_cell(cell: Cell, job: CellJob) -> ResultRecord:
    """Run one cell wherever this is called and append its row (ok or failed). It runs under
    the cell's run lock, after waiting for any other process still computing it; a cell that
    is finished on this data by then is not run again and its row is returned instead."""
    import torch

    from bench import claims, provenance, reproducible
    from bench.registry import import_plugins
    from bench.runner import failed_record, run_cell

    import_plugins(job.plugins)  # a fresh worker knows only the built-in plugins
    if job.threads:
        torch.set_num_threads(job.threads)
    with claims.run_lock(job.results_dir, cell.id):
        data = _data_fingerprint(cell, job)
        found = claims.stored_finished_row(job.results_dir, cell.id, data)
        if found is not None:
            return found
        started = provenance.now()
        try:
            if job.reproducible:
                reproducible.enter_worker(job.threads or reproducible.DEFAULT_THREADS)
            device = provenance.pick_device(job.device)
            record = run_cell(cell, job.data, device, Path(job.results_dir))
            if job.isolated and record.peak_memory_kind == "cpu_peak_rss_process":
                record.peak_memory_kind = "cpu_peak_rss_cell"
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # a failed cell is data (NaN loss, OOM, bugs): record it, go on
            record = failed_record(cell, err, started)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # after a CUDA OOM the next cell needs the memory back
        record.run_id = job.run_id
        record.data_fingerprint = record.data_fingerprint or data or ""  # a failed try: what it ran on
        if append_record(job.results_dir, record, once=True) is None:
            return claims.stored_finished_row(job.results_dir, cell.id, data) or record
    return record


def _data_fingerprint(cell: Cell, job: CellJob) -> str | None:
    """The cell's data as this worker reads it (cached for its run), or None when it cannot:
    the cell then fails in ``run_cell`` with the reason."""
    from bench.runner import data_fingerprint

    try:
        return data_fingerprint(cell.task, job.data)
    except Exception:  # any reason is run_cell's to report, as a failed row
        return None


def lost_cell(cell: Cell, job: CellJob, reason: str, started: str) -> ResultRecord:
    """The driver's row for a worker that died without returning one: the row it wrote after
    all (this run's, or any ``ok`` row of the cell), else a new failed row."""
    from bench.runner import failed_record

    data = _data_fingerprint(cell, job)
    records, _ = read_records(job.results_dir)
    for r in reversed(records):
        if r.cell_id == cell.id and r.run_id == job.run_id:
            return r  # the worker wrote its row before the executor lost track of it
    done = finished_row(records, cell.id, data)
    if done is not None:
        return done  # another run finished it meanwhile
    record = failed_record(cell, RuntimeError(reason), started)
    record.run_id, record.data_fingerprint = job.run_id, data or ""
    if append_record(job.results_dir, record, once=True) is None:
        return finished_row(read_records(job.results_dir)[0], cell.id, data) or record
    return record


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


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """Cells one after another in this process (backbones and data loaded once, shared).
    ``isolate = true`` runs each cell in a fresh child process instead: the per-cell peak
    RSS is then the cell's own, and a cell killed by the OOM killer becomes a failed row."""

    name = "local"

    @dataclass(frozen=True)
    class Config:
        isolate: bool = field(default=False, metadata={"help": "one fresh child process per cell"})
        workers: int = field(default=1, metadata={"help": "child processes at once (isolate only)"})

        def __post_init__(self) -> None:
            positive("workers", self.workers)
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
        if job.reproducible and not self.config.isolate:
            # the pinned kernels need a process that has run none yet
            log("reproducible mode: each cell runs in a fresh child process")
            yield from _run_children(cells, dataclasses.replace(job, threads=self.threads_per_cell(job.threads),
                                                                isolated=True), 1)
            return
        if not self.config.isolate:
            for cell in cells:
                yield execute_cell(cell, job)
            return
        job = dataclasses.replace(job, threads=self.threads_per_cell(job.threads), isolated=True)
        yield from _run_children(cells, job, self.config.workers)


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


def _child(cell: Cell, job: CellJob, conn: Any, parent: int) -> None:
    import signal

    from bench import orphans

    orphans.die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited already; the driver stops us
    orphans.no_shared_semaphores()
    record = execute_cell(cell, job)
    conn.send(record)
    conn.close()


def _run_children(cells: Iterable[Cell], job: CellJob, workers: int) -> Iterator[ResultRecord]:
    from bench import orphans, provenance

    # spawn, not fork: a forked child inherits the parent's peak RSS (and its torch threads)
    ctx = multiprocessing.get_context("spawn")
    pending: Iterator[Cell] | None = iter(cells)
    running: dict[Any, tuple[Cell, Any, str]] = {}  # process -> (cell, receiving end, started)
    try:
        while pending or running:
            while pending and len(running) < workers:
                cell = next(pending, None)
                if cell is None:
                    pending = None
                    break
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, args=(cell, job, send, os.getpid()), daemon=True)
                with orphans.sigint_ignored():
                    proc.start()
                send.close()
                running[proc] = (cell, recv, provenance.now())
            if not running:
                break
            wait([p.sentinel for p in running] + [r for _, r, _ in running.values()])
            for proc in list(running):
                cell, recv, started = running[proc]
                record = None
                if recv.poll():
                    try:
                        record = recv.recv()
                    except EOFError:
                        record = None
                if record is None and proc.is_alive():
                    continue
                proc.join()
                recv.close()
                del running[proc]
                if record is None:
                    code = proc.exitcode
                    why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    record = lost_cell(cell, job, f"worker process died ({why}; out of memory?)", started)
                yield record
    finally:
        for proc in running:
            proc.kill()
            proc.join()


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Cells as Ray tasks with resource requests. Connects to ``address`` (``auto``: the
    cluster this machine belongs to) or starts a local Ray instance with ``num_cpus``."""

    name = "ray"

    @dataclass(frozen=True)
    class Config:
        address: str = field(default="", metadata={
            "help": "cluster address (ray://host:10001, auto); empty: start a local instance"})
        num_cpus: int = field(default=2, metadata={"help": "CPUs of a local instance we start"})
        cpus_per_cell: float = field(default=1.0, metadata={"help": "CPUs requested by each cell"})
        gpus_per_cell: float = field(default=-1.0, metadata={
            "help": "GPUs requested by each cell; -1: 1 when the device is cuda (or auto with a "
                    "GPU in the cluster), else 0"})

        def __post_init__(self) -> None:
            positive("num_cpus", self.num_cpus)
            positive("cpus_per_cell", self.cpus_per_cell)
            if self.gpus_per_cell < 0 and self.gpus_per_cell != -1:
                raise ConfigError(f"gpus_per_cell must be >= 0 or -1 (auto), got {self.gpus_per_cell!r}")

    def validate(self) -> None:
        _require("ray", "ray")

    def threads_per_cell(self, threads: int) -> int:
        return threads or max(1, int(self.config.cpus_per_cell))

    def run(self, cells: Iterable[Cell], job: CellJob, log: Log) -> Iterator[ResultRecord]:
        import ray

        from bench import provenance, reproducible

        cells = list(cells)  # all queued at once: every cell is claimed now
        if not cells:
            return
        started_here = not ray.is_initialized()
        if started_here:
            # workers on other machines get the pinned variables through the runtime env
            env = {"env_vars": dict(reproducible.PINNED_ENV)} if job.reproducible else None
            if self.config.address:
                ray.init(address=self.config.address, log_to_driver=False, runtime_env=env)
            else:
                ray.init(num_cpus=self.config.num_cpus, include_dashboard=False, log_to_driver=False,
                         runtime_env=env)
        try:
            gpus = self.config.gpus_per_cell
            if gpus < 0:
                wants_cuda = job.device.startswith("cuda") or (
                    job.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
                gpus = 1.0 if wants_cuda else 0.0
            threads = self.threads_per_cell(job.threads)
            # max_calls=1: a fresh worker process per cell, so its peak RSS is the cell's and
            # no state leaks between cells; max_retries=0: a crash becomes a failed row
            remote = ray.remote(max_calls=1, max_retries=0)(execute_cell).options(
                num_cpus=self.config.cpus_per_cell, num_gpus=gpus)
            cell_job = dataclasses.replace(
                job, device="cuda" if gpus and job.device == "auto" else job.device, threads=threads,
                isolated=True)
            started = provenance.now()
            refs = {remote.remote(cell, cell_job): cell for cell in cells}
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                cell = refs.pop(done[0])
                try:
                    yield ray.get(done[0])
                except Exception as err:  # the worker died (OOM kill, node lost)
                    yield lost_cell(cell, job, f"ray task failed: {type(err).__name__}: {err}"[:1500], started)
        finally:
            if started_here:
                ray.shutdown()


@EXECUTORS.register("slurm")
class SlurmExecutor(Executor):
    """Cells as one Slurm array job through submitit. ``cluster = "local"`` runs the same
    job script on this machine (submitit's LocalExecutor), which is what the tests use."""

    name = "slurm"

    @dataclass(frozen=True)
    class Config:
        partition: str = field(default="", metadata={"help": "Slurm partition (empty: the cluster default)"})
        timeout_min: int = field(default=60, metadata={"help": "wall-clock limit per cell, minutes"})
        cpus_per_cell: int = field(default=4, metadata={"help": "CPUs per array task"})
        gpus_per_cell: int = field(default=0, metadata={"help": "GPUs per array task"})
        mem_gb: float = field(default=16.0, metadata={"help": "memory per array task, GB"})
        array_parallelism: int = field(default=64, metadata={"help": "array tasks running at once"})
        folder: str = field(default="", metadata={
            "help": "submitit logs and pickles (empty: RESULTS/slurm)"})
        cluster: str = field(default="slurm", metadata={
            "help": "slurm | local (same job on this machine) | auto (slurm when sbatch exists)"})

        def __post_init__(self) -> None:
            for name in ("timeout_min", "cpus_per_cell", "mem_gb", "array_parallelism"):
                positive(name, getattr(self, name))
            positive("gpus_per_cell", self.gpus_per_cell, allow_zero=True)
            if self.cluster not in ("slurm", "local", "auto"):
                raise ConfigError(f"cluster {self.cluster!r} is not one of slurm, local, auto")

    def validate(self) -> None:
        _require("submitit", "submitit")

    def threads_per_cell(self, threads: int) -> int:
        return threads or self.config.cpus_per_cell

    def run(self, cells: Iterable[Cell], job: CellJob, log: Log) -> Iterator[ResultRecord]:
        import submitit

        from bench import provenance

        cells = list(cells)  # one array job: every cell is claimed now
        if not cells:
            return
        c = self.config
        folder = c.folder or str(Path(job.results_dir) / "slurm")
        cluster = None if c.cluster == "auto" else c.cluster
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        params: dict[str, Any] = {"timeout_min": c.timeout_min, "cpus_per_task": c.cpus_per_cell,
                                  "gpus_per_node": c.gpus_per_cell, "slurm_array_parallelism": c.array_parallelism,
                                  "name": "prefix-bench"}
        if executor.cluster == "slurm":
            params["mem_gb"] = c.mem_gb
            if c.partition:
                params["slurm_partition"] = c.partition
        executor.update_parameters(**params)
        cell_job = dataclasses.replace(job, threads=self.threads_per_cell(job.threads), isolated=True)
        started = provenance.now()
        jobs = executor.map_array(execute_cell, cells, [cell_job] * len(cells))
        log(f"submitted {len(jobs)} {executor.cluster} jobs (array {jobs[0].job_id.split('_')[0]}); logs in {folder}")
        pending = dict(zip(jobs, cells, strict=True))
        while pending:
            for sjob in [j for j in pending if j.done()]:
                cell = pending.pop(sjob)
                try:
                    yield sjob.result()
                except Exception as err:  # timeout, preemption, node failure, OOM kill
                    yield lost_cell(cell, job, f"slurm job {sjob.job_id} failed: {str(err)[-1500:]}", started)
            if pending:
                time.sleep(1.0)


def _require(module: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"executor needs the {package!r} package: pip install 'prefix-bench[distributed]'")


def threads_for(workers: int) -> int:
    """Torch threads per worker so concurrent workers do not oversubscribe this machine."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
