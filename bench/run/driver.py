"""The driver: validate everything first, then run each unfinished cell with an executor,
appending one record per cell. Backbones are loaded once per process and copied per cell,
so no cell can change the weights another cell sees.

A learning-rate search runs in two phases: every trial cell first (ordinary cells to an
executor, so trials that differ only in lr can pack; the ``ray`` executor with ``tune = true``
runs them as Ray Tune trials, each still appending its own row), then each final cell with the
value its trials' rows chose (bench/run/search.py), handed to it outside its id."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bench.core.config import ConfigError
from bench.core.record_check import problem_summary
from bench.core.records import ResultRecord, latest_by_cell, read_records
from bench.core.torn_tail import set_aside_torn_tail
from bench.measure import provenance, reproducible
from bench.run import locks, packed, search, staleness
from bench.run.backbones import weights_of
from bench.run.data import data_fingerprint
from bench.run.executors import CellJob, Executor, LocalExecutor, lost_cell
from bench.run.matrix import Cell
from bench.run.search_spec import MAX_WIDEN_STEPS
from bench.run.validate import validate_cells
from tasks import DataSettings, cell_task

if TYPE_CHECKING:
    from bench.run.trackers.log import CellTracking


def run_cells(cells: list[Cell], results_dir: Path, data: DataSettings, device: torch.device | str,
              retry_failed: bool = False, log: Callable[[str], None] = print, trials_only: bool = False,
              executor: Executor | None = None, threads: int = 0,
              plugins: tuple[str, ...] = (), reproducible_mode: bool = False,
              tracker: str = "", tracker_uri: str = "") -> dict[str, int]:
    """Run every unfinished cell with ``executor`` (default: in this process); returns counts
    (cells, ran, skipped, failed). The results folder is checked writable and everything is
    validated before any model loads. Cells are pinned to the executor's threads and the
    deterministic-algorithms setting (both are in a cell's id). Each cell is claimed before
    it runs (bench/run/locks.py): a second driver on the same folder runs other cells, never the
    same ones; cells it finds running elsewhere are looked at again at the end and otherwise
    left to that run (counted as skipped). Each row is in the store before it is reported.
    Search trials run before every other cell; a final cell whose trials run elsewhere is
    left for a later run (counted as skipped). ``trials_only``: the search trials alone, then each
    search's choice logged and no final cell run (counted as skipped). With ``tracker`` (bench/run/trackers/) each row
    this run stores is also logged there (``tracker_uri``, default under ``results_dir``) by a
    process of its own; a missing backend is a ConfigError before anything runs."""
    cells = with_trials(cells)
    tracking = _tracking(tracker, tracker_uri, Path(results_dir), log) if tracker else None
    validate_cells(cells, data)
    executor = executor or LocalExecutor()
    executor.check_cells(cells)
    try:
        locks.check_writable(results_dir)
    except OSError as err:
        raise ConfigError(f"results folder {results_dir} is not writable ({err.strerror or err}"
                          f"{': ' + str(err.filename) if err.filename else ''}); nothing was run: "
                          "fix its permissions or choose another folder with --results") from None
    repaired = set_aside_torn_tail(results_dir)  # a crash may have torn the last row
    if repaired:
        log(repaired)
    if reproducible_mode:  # a fixed count, not one derived from this machine's cores
        threads = threads or reproducible.DEFAULT_THREADS
    cells = pinned_cells(cells, executor, threads, reproducible_mode, device)  # before any id is compared
    records, problems = read_records(results_dir)
    if problems:
        log(problem_summary(problems))
    # validate_cells has read every task's data: its fingerprints cost nothing more. A trial's
    # names only the training split: it never reads the evaluation split
    fingerprints = {c.id: data_fingerprint(c.task, data, eval_split=not c.is_trial, task_args=c.task_args) for c in cells}
    plan = staleness.plan(cells, records, fingerprints, retry_failed)
    todo = [c for c in plan.todo if c.is_trial] if trials_only else plan.todo
    counts = {"cells": len(cells), "skipped": len(cells) - len(todo), "ran": 0, "failed": 0}
    if plan.stale:
        log(plan.describe())
    log(f"{len(cells)} cells, {counts['skipped']} already finished, {len(todo)} to run -> {results_dir}"
        f" ({executor.name} executor, {executor.threads_per_cell(threads)} threads per cell)")
    # absolute: workers (child processes, Ray, Slurm) may start in another directory
    job = CellJob(data, str(device), str(Path(results_dir).resolve()), threads, plugins=tuple(plugins),
                  reproducible=reproducible_mode)
    if reproducible_mode:
        reproducible.export_env()  # inherited by every worker this driver starts
    if tracking is not None:
        tracking.start(todo)
    held = locks.DriverClaims(Path(results_dir), log, fingerprints)
    progress = Progress(len(todo), tracking.row if tracking else None)
    try:
        # share loaded backbones and data; cells that can pack adjacent
        _run_phase(packed.ordered(c for c in todo if c.is_trial), executor, job, held, counts, progress, log)
        finals = [c for c in plan.todo if c.search and not c.is_trial]
        for _ in range(MAX_WIDEN_STEPS):  # each pass a step further, for the edge choices its rule widens
            extra = _widening_trials(finals, Path(results_dir), log)
            if not extra:
                break
            fingerprints.update({c.id: data_fingerprint(c.task, data, eval_split=False, task_args=c.task_args)
                                 for c in extra})
            progress.total += len(extra)
            _run_phase(extra, executor, job, held, counts, progress, log)
        if trials_only:  # every search's choice (and its grid edge) said, for a look before the finals
            _hand_out_choices([c for c in cells if c.search and not c.is_trial], Path(results_dir), log)
        rest, unrunnable = _hand_out_choices([c for c in todo if not c.is_trial], Path(results_dir), log)
        for cell in held.take(c for c, _ in unrunnable.values()):  # no trial scored: its row says why
            record = lost_cell(cell, job, unrunnable[cell.id][1], provenance.now())
            held.release(record.cell_id)
            _report(record, counts, progress, job.run_id, log)
        _run_phase(searched_length_first(packed.ordered(rest)), executor, job, held, counts, progress, log)
    finally:
        held.release_all()
        if tracking is not None:
            tracking.close()
    if held.elsewhere:
        log(f"{len(held.elsewhere)} cell(s) still running elsewhere, left to that run")
    counts["skipped"] = len(cells) - counts["ran"]
    if progress.errors:
        log(progress.failure_summary())
    return counts


def _tracking(name: str, uri: str, results_dir: Path, log: Callable[[str], None]) -> CellTracking:
    from bench.run.trackers.log import CellTracking

    return CellTracking(name, uri, results_dir, log)


def searched_length_first(cells: list[Cell]) -> list[Cell]:
    """Final cells at the prefix length their search ran at (and those without a length) before
    the other lengths, otherwise in the given order: the methods' comparison at the searched
    setting completes first, the length sweep after, so a run cut short leaves the answer to the
    main question rather than half of every question. Stable within each (backbone, task), whose
    cells stay together (``packed.ordered``: they share a loaded backbone and data)."""
    def key(c: Cell) -> tuple[str, str, bool]:
        searched = c.search.get("prefix_length") if isinstance(c.search, dict) else None
        return c.backbone, c.task, searched is not None and c.prefix_length is not None and c.prefix_length != searched

    return sorted(cells, key=key)


def with_trials(cells: list[Cell]) -> list[Cell]:
    """``cells`` with every final cell's search trials (bench/run/matrix.py), each cell once."""
    out: dict[str, Cell] = {}
    for cell in cells:
        for c in (*cell.trials(), cell):
            out.setdefault(c.id, c)
    return list(out.values())


def _run_phase(todo: list[Cell], executor: Executor, job: CellJob, held: locks.DriverClaims,
               counts: dict[str, int], progress: Progress, log: Callable[[str], None]) -> None:
    """Run ``todo``, then look once more at the cells found running elsewhere."""
    for last_look, pending in ((False, todo), (True, None)):
        pending = held.recheck() if last_look else pending
        for record in executor.run(held.take(pending, last_look), job, log):
            held.release(record.cell_id)
            _report(record, counts, progress, job.run_id, log)


def _widening_trials(finals: list[Cell], results_dir: Path, log: Callable[[str], None]) -> list[Cell]:
    """The trials a step beyond an edge choice that the finals' ``widen`` rules ask for now,
    each once (a group's finals share them), said in the log."""
    if not any(c.search.get("widen") for c in finals):
        return []
    latest = latest_by_cell(read_records(results_dir)[0])
    out: dict[str, Cell] = {}
    for cell in finals:
        if not cell.search.get("widen"):
            continue
        task = cell_task(cell)
        w = search.widened(cell, latest, task.facts().higher_is_better.get(task.main_metric, True))
        if w.next is not None and w.next.id not in out:
            out[w.next.id] = w.next
            log(f"search {cell.method} {cell.task} {cell.backbone}: {w.why}: one more trial at lr {w.next.train['lr']}")
    return list(out.values())


def _hand_out_choices(cells: list[Cell], results_dir: Path,
                      log: Callable[[str], None]) -> tuple[list[Cell], dict[str, tuple[Cell, str]]]:
    """(cells to run, {id: (final cell, why it cannot run)}): each final cell of a search
    given what its trials' rows chose; one whose trials all failed cannot run. One whose
    trials have no row yet (running elsewhere) is left out of both."""
    if not any(c.search for c in cells):
        return cells, {}
    latest = latest_by_cell(read_records(results_dir)[0])
    ready: list[Cell] = []
    unrunnable: dict[str, tuple[Cell, str]] = {}
    said: set[tuple[str, ...]] = set()
    for cell in cells:
        if not cell.search:
            ready.append(cell)
            continue
        task = cell_task(cell)
        choice = search.choose(cell, latest, task.facts().higher_is_better.get(task.main_metric, True))
        group = tuple(t.id for t in cell.trials())
        # one choice serves every prefix length: name the length its trials ran at, not this final's
        trial_length = cell.trials()[0].prefix_length
        where = f"search {cell.method} {cell.task} {cell.backbone}" + \
            (f" (trials at P={trial_length})" if trial_length is not None else "")
        if choice.pending:
            log(f"{where} seed={cell.seed}: its trials have no rows yet (running elsewhere); left for a later run")
            continue
        if group not in said:
            said.add(group)
            scores = ", ".join(f"{lr}: {'failed' if v is None else f'{v:.4f}'}"
                               for lr, v in choice.selection["scores"].items())
            log(f"{where}: {choice.error or 'lr ' + str(choice.selection['chosen']['lr']) + ' chosen'} "
                f"(held-out {task.main_metric}: {scores}){search.edge_warning(choice.selection)}")
        if choice.error:
            unrunnable[cell.id] = (dataclasses.replace(cell, selection=choice.selection), choice.error)
        else:
            ready.append(dataclasses.replace(cell, selection=choice.selection))
    return ready, unrunnable


def pinned_cells(cells: list[Cell], executor: Executor | None = None, threads: int = 0,
                 reproducible_mode: bool = False, device: torch.device | str = "cpu") -> list[Cell]:
    """``cells`` as ``run_cells`` runs them: pinned to the torch threads ``executor`` gives
    each cell, to the deterministic-algorithms setting, to the weights its backbone source
    resolves to here and to precision ``auto`` resolved for ``device``, all part of their ids
    (the bytes differ at 1 and 2 threads, and in bf16). ``device`` is the spec cells run on;
    "auto" resolves as ``pick_device`` would here (a remote executor's workers may differ:
    name the device, or set the precision)."""
    threads = (executor or LocalExecutor()).threads_per_cell(threads)
    deterministic = reproducible_mode or torch.are_deterministic_algorithms_enabled()
    target = _planning_device(device)
    return [c.pinned(threads, deterministic, weights_of(c.backbone, c.backbone_source), target) for c in cells]


def _planning_device(device: torch.device | str) -> torch.device:
    """The device ``auto`` precision is resolved for: ``device`` itself, or for a spec a
    worker resolves ("auto", "cuda:1"), its type as ``pick_device`` would see it here."""
    if isinstance(device, torch.device):
        return device
    spec = str(device)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec != "cpu" and not spec.startswith("cuda"):
        raise ConfigError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")
    return torch.device(spec.split(":")[0])


class Progress:
    """Cell k of n, the time so far and an estimate of the time left (the mean time per cell
    this run has taken so far, times the cells left), and the failed cells' errors."""

    def __init__(self, total: int, on_row: Callable[[ResultRecord], None] | None = None) -> None:
        self.total, self.done, self.start = total, 0, time.monotonic()
        self.on_row = on_row  # each row this run stored, once reported (a tracker's)
        self.errors: dict[str, list[str]] = {}

    def step(self) -> str:
        self.done += 1
        elapsed = time.monotonic() - self.start
        left = elapsed / self.done * (self.total - self.done)
        return f"[{self.done}/{self.total}, {clock(elapsed)} elapsed, ~{clock(left)} left]"

    def failed(self, record: ResultRecord) -> None:
        first = (str(record.error).strip().splitlines() or ["(no error text)"])[0][:300]
        self.errors.setdefault(first, []).append(
            f"{record.method}/{record.task}/{record.backbone}/P={record.prefix_length}/seed={record.seed}")

    def failure_summary(self) -> str:
        lines = [f"{sum(map(len, self.errors.values()))} cell(s) failed:"]
        for error, where in sorted(self.errors.items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
            lines.append(f"  {len(where)} x {error}  [{shown}]")
        return "\n".join(lines)


def clock(seconds: float) -> str:
    """H:MM:SS, or M:SS under an hour (progress lines, bench/perf_suite.py)."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _report(record: ResultRecord, counts: dict[str, int], progress: Progress, run_id: str,
            log: Callable[[str], None]) -> None:
    head = (f"{progress.step()} {record.method} {record.task} {record.backbone} "
            f"P={record.prefix_length} seed={record.seed}"
            + (f" trial lr={record.config.get('train', {}).get('lr')}" if record.role == "trial" else ""))
    if record.run_id != run_id:  # a worker found the row of another run and did not train
        log(f"{head}: finished elsewhere meanwhile, not run again")
        return
    counts["ran"] += 1
    if progress.on_row is not None:
        progress.on_row(record)
    if record.status != "ok":
        counts["failed"] += 1
        progress.failed(record)
        log(f"{head}: FAILED {record.error}")
    else:
        flag = " (collapsed to one class)" if record.collapsed else ""
        log(f"{head}: {record.main_metric}={record.main_score:.4f}{flag} "
            f"loss {record.first_loss:.3f}->{record.final_loss:.3f}, "
            f"{record.train_tokens_per_s:.0f} train tok/s, "
            f"{record.train_seconds + record.eval_seconds:.0f} s")
