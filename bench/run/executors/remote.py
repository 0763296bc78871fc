"""Cells as Ray tasks or Slurm array jobs (the `distributed` extra); on Ray, optionally a
search's trial cells as Ray Tune trials (bench/run/executors/tune_trials.py)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.config import ConfigError, positive
from bench.core.records import ResultRecord
from bench.run.executors.base import EXECUTORS, Executor, Log, require_package
from bench.run.executors.tune_trials import SCHEDULERS, Scheduling, run_trials
from bench.run.job import CellJob, execute_cell, lost_cell
from bench.run.matrix import Cell


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Cells as Ray tasks with resource requests. Connects to ``address`` (``auto``: the
    cluster this machine belongs to) or starts a local Ray instance with ``num_cpus``.
    ``tune = true`` runs a learning-rate search's trial cells as Ray Tune trials under
    ``scheduler`` (bench/run/executors/tune_trials.py); every other cell stays a plain task."""

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
        tune: bool = field(default=False, metadata={
            "help": "run a search's trial cells as Ray Tune trials, one per trial cell, each reporting its "
                    "periodic held-out scores (eval_every) to the scheduler; cell ids as without"})
        scheduler: str = field(default="fifo", metadata={
            "help": "with tune: fifo (every trial trains to its step budget: the plain grid) | asha (ASHA "
                    "stops a trial whose held-out score at a rung is below its group's cut; the same "
                    "settings for every method)"})
        grace_evals: int = field(default=1, metadata={
            "help": "asha: periodic evaluations a trial runs before it may be stopped"})
        reduction_factor: float = field(default=2.0, metadata={
            "help": "asha: rungs at grace_evals x eval_every x reduction_factor^k steps; a trial below the "
                    "top 1/reduction_factor of a rung stops"})

        def __post_init__(self) -> None:
            positive("num_cpus", self.num_cpus)
            positive("cpus_per_cell", self.cpus_per_cell)
            if self.gpus_per_cell < 0 and self.gpus_per_cell != -1:
                raise ConfigError(f"gpus_per_cell must be >= 0 or -1 (auto), got {self.gpus_per_cell!r}")
            if self.scheduler not in SCHEDULERS:
                raise ConfigError(f"scheduler {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
            if self.scheduler != "fifo" and not self.tune:
                raise ConfigError(f"scheduler = {self.scheduler!r} needs tune = true (without Ray Tune every "
                                  "trial runs to its budget as a plain task)")
            positive("grace_evals", self.grace_evals)
            if not self.reduction_factor > 1:
                raise ConfigError(f"reduction_factor must be > 1, got {self.reduction_factor!r}")
            if self.scheduler != "asha" and (self.grace_evals, self.reduction_factor) != (1, 2.0):
                raise ConfigError("grace_evals and reduction_factor are asha's settings: set scheduler = 'asha' "
                                  f"(scheduler is {self.scheduler!r})")

        @property
        def scheduling(self) -> Scheduling:
            return Scheduling(self.scheduler, self.grace_evals, self.reduction_factor)

    def validate(self) -> None:
        require_package("ray", "ray")
        if self.config.tune:
            import ray

            try:
                import ray.tune  # its own dependencies are checked on import
            except ImportError as err:
                raise ConfigError(f"tune = true needs Ray Tune ({err}): pip install 'prefix-bench[distributed]'") from None
            if not hasattr(ray.tune, "RunConfig"):  # ray.tune.report and RunConfig came in 2.41
                raise ConfigError(f"tune = true needs ray >= 2.41, this is ray {ray.__version__}: "
                                  "pip install 'prefix-bench[distributed]'")

    def check_cells(self, cells: list[Cell]) -> None:
        if not self.config.tune:
            return
        for cell in cells:
            problem = self.config.scheduling.problem(cell) if cell.is_trial else ""
            if problem:
                raise ConfigError(f"ray executor, trial {cell.method}/{cell.task}/{cell.backbone}/"
                                  f"P={cell.prefix_length} lr={cell.train.get('lr')}: {problem}")

    def threads_per_cell(self, threads: int) -> int:
        return threads or max(1, int(self.config.cpus_per_cell))

    def run(self, cells: Iterable[Cell], job: CellJob, log: Log) -> Iterator[ResultRecord]:
        import ray

        from bench.measure import provenance, reproducible

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
            cell_job = dataclasses.replace(
                job, device="cuda" if gpus and job.device == "auto" else job.device, threads=threads,
                isolated=True)
            started = provenance.now()
            trials = [c for c in cells if c.is_trial] if self.config.tune else []
            if trials:  # one relay per cell the cluster runs at once: a trial's cell starts only once its relay runs
                fits = ray.cluster_resources()
                concurrent = int(fits.get("CPU", 1) // self.config.cpus_per_cell)
                if gpus:
                    concurrent = min(concurrent, int(fits.get("GPU", 0) // gpus))
                yield from run_trials(trials, cell_job, self.config.scheduling,
                                      {"num_cpus": self.config.cpus_per_cell, "num_gpus": gpus}, concurrent,
                                      lambda cell, why: lost_cell(cell, job, why, started), log)
                cells = [c for c in cells if not c.is_trial]
            # max_calls=1: a fresh worker process per cell, so its peak RSS is the cell's and
            # no state leaks between cells; max_retries=0: a crash becomes a failed row
            remote = ray.remote(max_calls=1, max_retries=0)(execute_cell).options(
                num_cpus=self.config.cpus_per_cell, num_gpus=gpus)
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
        require_package("submitit", "submitit")

    def threads_per_cell(self, threads: int) -> int:
        return threads or self.config.cpus_per_cell

    def run(self, cells: Iterable[Cell], job: CellJob, log: Log) -> Iterator[ResultRecord]:
        import submitit

        from bench.measure import provenance

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
