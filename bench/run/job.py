"""The job every executor runs: :func:`execute_cell` trains and evaluates one cell under its
run lock, turns any exception into a ``failed`` row, appends the row and returns it.

Workers append directly (``append_record`` is flock + O_APPEND + fsync, safe with many
writers) so that a finished cell is on disk the moment it finishes, even when the driver
dies. Only when a worker dies without writing anything does the driver append the failed
row (:func:`lost_cell`), so a crash is still data and ``--retry-failed`` finds it.
A worker computes its cell under the cell's run lock and appends only while the cell has
no ``ok`` row (bench/run/locks.py), so a worker left over from a dead driver and the worker
of the next run never both record one cell.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.core.records import ResultRecord, append_record, finished_row, read_records
from bench.core.registry import import_plugins
from bench.measure import provenance, reproducible
from bench.run import locks
from bench.run.cell import failed_record, run_cell
from bench.run.data import data_fingerprint
from bench.run.matrix import Cell
from tasks import DataSettings


@dataclass(frozen=True)
class CellJob:
    """What a worker needs besides the cell; small and picklable."""

    data: DataSettings
    device: str  # a spec resolved on the worker ("auto", "cpu", "cuda", "cuda:1")
    results_dir: str
    threads: int = 0  # torch CPU threads in the worker (0: leave torch's default)
    isolated: bool = False  # the worker process runs only this cell: its peak RSS is the cell's
    plugins: tuple[str, ...] = ()  # modules the user named with --plugin, imported in the worker too
    reproducible: bool = False  # bench/measure/reproducible.py: pinned kernels; needs a fresh worker process
    # the driver run, stamped on every row it writes: tells a row this run produced from one
    # it found in the store (finished by another run, or by a worker of a dead driver)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])


def execute_cell(cell: Cell, job: CellJob, on_eval: Callable[[int, float], bool] | None = None) -> ResultRecord:
    """Run one cell wherever this is called and append its row (ok or failed). It runs under
    the cell's run lock, after waiting for any other process still computing it; a cell that
    is finished on this data by then is not run again and its row is returned instead.
    ``on_eval``: a search scheduler's hook (bench/run/trainer.py ``train``)."""
    _enter(job)
    with locks.run_lock(job.results_dir, cell.id):
        data = _data_fingerprint(cell, job)
        found = locks.stored_finished_row(job.results_dir, cell.id, data)
        if found is not None:
            return found
        return _store(cell, job, data, _alone(cell, job, on_eval))


def execute_pack(cells: list[Cell], job: CellJob, log: Callable[[str], None] = print) -> list[ResultRecord]:
    """Run cells of one pack key (bench/run/packed.py) in one training pass and append each
    cell's row, as ``execute_cell`` does for one: under every cell's run lock (taken in id
    order, so two processes never wait on each other), skipping cells finished meanwhile.
    Cells the pass does not compute (they cannot pack, or the pass failed) run alone."""
    if len(cells) < 2 or job.reproducible:  # a packed cell's bits depend on its pack
        return [execute_cell(cell, job) for cell in cells]
    from bench.run import packed

    _enter(job)
    with contextlib.ExitStack() as held:
        for cell in sorted(cells, key=lambda c: c.id):
            held.enter_context(locks.run_lock(job.results_dir, cell.id))
        data = {cell.id: _data_fingerprint(cell, job) for cell in cells}
        found = {cell.id: locks.stored_finished_row(job.results_dir, cell.id, data[cell.id]) for cell in cells}
        todo = [cell for cell in cells if found[cell.id] is None]
        together: dict[str, ResultRecord] = {}
        if len(todo) > 1:
            try:
                device = provenance.pick_device(job.device)
            except Exception:  # each cell, alone, records why
                device = None
            if device is not None:
                together = packed.train_together(todo, job.data, device, Path(job.results_dir), log)
        rows = []
        for cell in cells:
            row = found[cell.id]
            if row is None:
                row = _store(cell, job, data[cell.id], together.get(cell.id) or _alone(cell, job))
            rows.append(row)
    return rows


def _enter(job: CellJob) -> None:
    import_plugins(job.plugins)  # a fresh worker knows only the built-in plugins
    if job.threads:
        torch.set_num_threads(job.threads)


def _alone(cell: Cell, job: CellJob, on_eval: Callable[[int, float], bool] | None = None) -> ResultRecord:
    """The cell's row from running it alone: ok, or failed with the reason."""
    started = provenance.now()
    try:
        if job.reproducible:
            reproducible.enter_worker(job.threads or reproducible.DEFAULT_THREADS)
        device = provenance.pick_device(job.device)
        record = run_cell(cell, job.data, device, Path(job.results_dir), on_eval)
        if job.isolated and record.peak_memory_kind == "cpu_peak_rss_process":
            record.peak_memory_kind = "cpu_peak_rss_cell"
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # a failed cell is data (NaN loss, OOM, bugs): record it, go on
        record = failed_record(cell, err, started)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # after a CUDA OOM the next cell needs the memory back
    return record


def _store(cell: Cell, job: CellJob, data: str | None, record: ResultRecord) -> ResultRecord:
    """Append ``record`` unless the cell is finished meanwhile; the row that stands."""
    record.run_id = job.run_id
    record.data_fingerprint = record.data_fingerprint or data or ""  # a failed try: what it ran on
    if append_record(job.results_dir, record, once=True) is None:
        return locks.stored_finished_row(job.results_dir, cell.id, data) or record
    return record


def _data_fingerprint(cell: Cell, job: CellJob) -> str | None:
    """The cell's data as this worker reads it (cached for its run), or None when it cannot:
    the cell then fails in ``run_cell`` with the reason."""
    try:
        return data_fingerprint(cell.task, job.data, eval_split=not cell.is_trial, task_args=cell.task_args)
    except Exception:  # any reason is run_cell's to report, as a failed row
        return None


def lost_cell(cell: Cell, job: CellJob, reason: str, started: str) -> ResultRecord:
    """The driver's row for a worker that died without returning one: the row it wrote after
    all (this run's, or any ``ok`` row of the cell), else a new failed row."""
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
