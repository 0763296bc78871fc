"""A learning-rate search's trial cells as Ray Tune trials (the ``ray`` executor with
``tune = true``): one Tune experiment per batch of trial cells, one Tune trial per trial cell,
a grid search over them (each group's learning-rate grid), and a scheduler, the same for every
method so that each gets the same budget: ``fifo`` runs every trial to its step budget (the
grid as ordinary cells would), ``asha`` stops a trial whose held-out score at a rung is below
the cut of the trials of its own group (same method, task, backbone, prefix length) that
reached that rung before it.

What makes a row trustworthy does not change: each trial cell runs as an ordinary Ray task
(``execute_cell``: run lock, one row appended by the worker, a finished cell never recomputed);
Tune sees only the periodic held-out scores (bench/run/tune_relay.py) and never reads the
evaluation split, which trial cells do not load. A trial the scheduler stops keeps its best
evaluation's parameters, is scored on the held-out slice like any trial, and its row's
``search`` names the scheduler and says ``stopped_by_scheduler``; bench/run/search.py then
chooses from these rows as from any others.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.core.records import ResultRecord
from bench.run.job import CellJob, execute_cell
from bench.run.matrix import Cell
from tasks import cell_task

SCHEDULERS = ("fifo", "asha")
Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Scheduling:
    """The scheduler every trial of a search runs under (the same for every method)."""

    name: str = "fifo"
    grace_evals: int = 1  # asha: periodic evaluations a trial runs before it may be stopped
    reduction_factor: float = 2.0  # asha: rungs at grace * rf^k steps; below the top 1/rf of a rung stops

    def describe(self, cell: Cell) -> dict[str, Any]:
        """What a trial row's ``search`` says about its scheduler (settings in steps)."""
        if self.name != "asha":
            return {"name": self.name}
        cfg = cell.train_config
        return {"name": "asha", "grace_period": self.grace_evals * cfg.eval_every, "max_t": cfg.train_steps,
                "reduction_factor": self.reduction_factor, "metric": "holdout_score", "mode": mode_of(cell)}

    def problem(self, cell: Cell) -> str:
        """Why this scheduler cannot schedule ``cell`` ("" when it can)."""
        if self.name != "asha":
            return ""
        cfg = cell.train_config
        if not cfg.eval_every:
            return ("asha stops trials on their periodic held-out evaluations, but this trial has eval_every = 0: "
                    "set e.g. train = { eval_every = 50 }, or scheduler = 'fifo'")
        if self.grace_evals * cfg.eval_every >= cfg.train_steps:
            return (f"asha's grace period, grace_evals {self.grace_evals} x eval_every {cfg.eval_every} = "
                    f"{self.grace_evals * cfg.eval_every} steps, leaves no evaluation to stop at before "
                    f"train_steps = {cfg.train_steps}: lower grace_evals or eval_every")
        return ""


def mode_of(cell: Cell) -> str:
    """The held-out score's direction for Tune: the task's main metric's."""
    task = cell_task(cell)
    return "max" if task.facts().higher_is_better.get(task.main_metric, True) else "min"


def group_of(cell: Cell) -> str:
    """The trials a scheduler compares a trial with: those differing from it only in lr."""
    return dataclasses.replace(cell, train={**cell.train, "lr": None}).id


def run_trials(cells: list[Cell], job: CellJob, scheduling: Scheduling, task_options: dict[str, Any],
               concurrent: int, lost: Callable[[Cell, str], ResultRecord], log: Log) -> Iterator[ResultRecord]:
    """Run trial ``cells`` as Tune trials (inside a Ray session); yield each row as it lands.
    ``task_options``: each cell task's resource request; ``concurrent``: trials at once (as many
    cells as the cluster fits: a trial's cell is launched only once its relay runs, so no
    cell ever waits on a relay that is not running). ``lost(cell, why)``: a row for a cell whose
    task died."""
    import ray
    from ray import tune

    from bench.run import tune_relay

    by_id = {c.id: dataclasses.replace(c, selection={"scheduler": scheduling.describe(c)}) for c in cells}
    mailbox = ray.remote(num_cpus=0)(tune_relay.Mailbox).remote()
    trainable = tune.with_resources(tune.with_parameters(tune_relay.relay, mailbox=mailbox),
                                    {"cpu": 0, "memory": 1})  # a relay only waits: it takes no CPU
    tuner = tune.Tuner(
        trainable, param_space={"cell": tune.grid_search(list(by_id))},
        tune_config=tune.TuneConfig(scheduler=_scheduler(scheduling, list(by_id.values())),
                                    max_concurrent_trials=max(1, concurrent), reuse_actors=False),
        run_config=tune.RunConfig(name=f"search-{job.run_id}-{uuid.uuid4().hex[:6]}",
                                  storage_path=str(Path(job.results_dir) / "tune"), verbose=0,
                                  callbacks=[tune_relay.Verdicts(mailbox)]))
    errors: list[str] = []
    fitting = threading.Thread(target=_fit, args=(tuner, errors), name="ray-tune", daemon=True)
    log(f"ray tune: {len(by_id)} trial(s) in {len({group_of(c) for c in cells})} group(s), scheduler "
        f"{scheduling.name}, {max(1, concurrent)} at a time; Tune's files in {Path(job.results_dir) / 'tune'}")
    remote = ray.remote(max_calls=1, max_retries=0)(_tuned_cell).options(**task_options)
    running: dict[Any, Cell] = {}
    launched: set[str] = set()
    detached = False
    fitting.start()
    try:
        while fitting.is_alive() or running:
            for key in ray.get(mailbox.started.remote(0.2)) if fitting.is_alive() else ():
                if key in by_id and key not in launched:
                    launched.add(key)
                    running[remote.remote(by_id[key], job, mailbox)] = by_id[key]
            if not fitting.is_alive() and not detached:  # no scheduler left: cells still reporting train on
                detached = True
                for key in launched:
                    mailbox.decide.remote(key, tune_relay.DETACH)
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.2) if running else ([], [])
            for ref in done:
                cell = running.pop(ref)
                mailbox.post.remote(cell.id, tune_relay.DONE)  # its relay returns: the trial completes
                try:
                    yield ray.get(ref)
                except Exception as err:  # the worker died (OOM kill, node lost)
                    yield lost(cell, f"ray task failed: {type(err).__name__}: {err}"[:1500])
        why = "; ".join(errors) or "its trial ended without starting the cell"
        for key in by_id.keys() - launched:
            yield lost(by_id[key], f"Ray Tune ended before this trial cell started ({why})"[:1500])
    finally:
        for key in by_id:  # whatever stopped us: every relay returns and every waiting cell trains on
            mailbox.post.remote(key, tune_relay.DONE)
            mailbox.decide.remote(key, tune_relay.DETACH)
        fitting.join(timeout=60)


def _fit(tuner: Any, errors: list[str]) -> None:
    try:
        grid = tuner.fit()
        errors.extend(f"{type(e).__name__}: {e}"[:300] for e in grid.errors)
    except Exception as err:  # the cells' rows say what became of them; this says why
        errors.append(f"{type(err).__name__}: {err}"[:300])


def _scheduler(scheduling: Scheduling, cells: list[Cell]) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from bench.run import tune_relay

    if scheduling.name == "fifo":
        return FIFOScheduler()
    made: dict[str, Any] = {}
    for cell in cells:
        g = group_of(cell)
        if g not in made:
            cfg = cell.train_config
            made[g] = ASHAScheduler(time_attr=tune_relay.TIME, metric=tune_relay.METRIC, mode=mode_of(cell),
                                    max_t=cfg.train_steps, grace_period=scheduling.grace_evals * cfg.eval_every,
                                    reduction_factor=scheduling.reduction_factor)
    return tune_relay.Grouped(made, {c.id: group_of(c) for c in cells})


def _tuned_cell(cell: Cell, job: CellJob, mailbox: Any) -> ResultRecord:
    """A trial cell's Ray task: ``execute_cell`` with each periodic held-out score handed to
    the scheduler and its verdict awaited (bench/run/trainer.py ``train``: ``on_eval``)."""
    import ray

    from bench.run import tune_relay

    asking = True

    def on_eval(step: int, score: float) -> bool:
        nonlocal asking
        if not asking:
            return False
        try:
            ray.get(mailbox.post.remote(cell.id, (step, float(score))))
            verdict = ray.get(mailbox.verdict.remote(cell.id))
        except ray.exceptions.RayError:  # the search is gone (its driver died): train on
            verdict = tune_relay.DETACH
        asking = verdict == tune_relay.GO
        return verdict == tune_relay.STOP

    return execute_cell(cell, job, on_eval)
