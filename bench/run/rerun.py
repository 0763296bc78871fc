"""``prefix-bench reproduce CELL_ID``: re-run one recorded cell from the resolved config
stored in its record and say whether the main metric comes back within tolerance.

The stored config is the cell's whole identity (its id is a hash of it, code identity
included), so the re-run rebuilds exactly that cell's options; a config whose hash no longer
matches the id (an edited file) is refused. The re-run uses today's code: code changes since
the record (bench/core/identity.py) and environment differences (git commit, package versions,
device) are printed beside the verdict, because they are the usual reason a number moves.

A row made in reproducible mode (bench/measure/reproducible.py) is re-run in that mode, in a fresh
process, so its bits can be compared on any x86 machine with AVX2. A CUDA row cannot be
expected back bit for bit: it is judged against the spread of its seeds (the sibling rows
that differ only in seed), not against a fixed tolerance. A search trial that a scheduler (Ray
Tune's ASHA) stopped early is re-run with the same stop, at its recorded ``stopped_step``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.core.config import ConfigError
from bench.core.record_check import problem_summary
from bench.core.records import ResultRecord, latest_by_cell, read_records, result_rows
from bench.core.safe_names import check_name

if TYPE_CHECKING:
    from bench.run.matrix import Cell

DEFAULT_TOLERANCE = 1e-6  # CPU runs are deterministic on one machine (and across machines when pinned)
SPREAD_FACTOR = 2.0  # a CUDA re-run may move by this many standard deviations of its seeds


@dataclass(frozen=True)
class Reproduction:
    record: ResultRecord
    rerun: ResultRecord
    tolerance: float
    code_changes: tuple[str, ...] = ()  # identity parts that differ from the record's (bench/core/identity.py)

    @property
    def delta(self) -> float:
        if self.record.main_score is None or self.rerun.main_score is None:
            return math.nan
        return self.rerun.main_score - self.record.main_score

    @property
    def ok(self) -> bool:
        return not math.isnan(self.delta) and abs(self.delta) <= self.tolerance

    def environment_changes(self) -> list[str]:
        a, b = self.record, self.rerun
        out = [f"code: {change}" for change in self.code_changes]
        if a.git_sha != b.git_sha:
            out.append(f"git {a.git_sha[:10] or '?'} -> {b.git_sha[:10]}")
        if a.device != b.device:
            out.append(f"device {a.device or '?'} -> {b.device}")
        if a.packed_with != b.packed_with:  # bench/run/packed.py: equal up to float rounding
            out.append(f"trained {_packing(a)} -> {_packing(b)}")
        for key in sorted(set(a.kernels) | set(b.kernels)):
            if a.kernels.get(key) != b.kernels.get(key):
                out.append(f"{key} {a.kernels.get(key, '-')} -> {b.kernels.get(key, '-')}")
        for pkg in sorted(set(a.versions) | set(b.versions)):
            if a.versions.get(pkg) != b.versions.get(pkg):
                out.append(f"{pkg} {a.versions.get(pkg, '-')} -> {b.versions.get(pkg, '-')}")
        return out


def _packing(record: ResultRecord) -> str:
    return f"in a pack of {record.packed_with}" if record.packed_with else "alone"


def find_record(results_dir: Path, cell_id: str) -> ResultRecord:
    """The newest finished record whose id starts with ``cell_id`` (a unique prefix will do)."""
    records, problems = read_records(results_dir)
    if problems:
        print(problem_summary(problems), file=sys.stderr)
    if not records:
        raise ConfigError(f"no records in {results_dir}")
    cells = latest_by_cell(records)
    hits = [cid for cid in cells if cid.startswith(cell_id)]
    if not hits:
        raise ConfigError(f"no cell {cell_id!r} in {results_dir}; recorded cells: {', '.join(sorted(cells)[:20])}"
                          + (" ..." if len(cells) > 20 else ""))
    if len(hits) > 1:
        raise ConfigError(f"cell id prefix {cell_id!r} is ambiguous: {', '.join(sorted(hits))}")
    record = cells[hits[0]]
    if record.status != "ok":
        raise ConfigError(f"cell {record.cell_id} last failed ({record.error[:200]}); nothing to reproduce")
    return record


def seed_spread_tolerance(records: list[ResultRecord], record: ResultRecord) -> tuple[float, int]:
    """SPREAD_FACTOR x the standard deviation of the main metric over ``record``'s seeds
    (ok rows of the same suite, method, task, backbone and prefix length), and how many
    seeds that is; (nan, n) when fewer than two seeds are recorded."""
    import statistics

    siblings = {r.seed: r.main_score for r in latest_by_cell(result_rows(records)).values()
                if r.status == "ok" and r.main_score is not None and math.isfinite(r.main_score)
                and (r.suite, r.method, r.task, r.backbone, r.prefix_length)
                == (record.suite, record.method, record.task, record.backbone, record.prefix_length)}
    if len(siblings) < 2:
        return math.nan, len(siblings)
    return SPREAD_FACTOR * statistics.stdev(siblings.values()), len(siblings)


@dataclass(frozen=True)
class StopAt:
    """A scheduler's stop replayed: training stops at the evaluation of ``step`` (picklable,
    for the pinned child process)."""

    step: int

    def __call__(self, step: int, score: float) -> bool:
        return step >= self.step

    @classmethod
    def of(cls, record: ResultRecord) -> StopAt | None:
        """The stop a search scheduler made in ``record``'s run (None: none stopped it)."""
        stopped = record.search.get("stopped_by_scheduler") is True and isinstance(record.stopped_step, int)
        return cls(record.stopped_step) if stopped else None


def _pinned_child(cell, data, device, results_dir, threads: int, conn, plugins: tuple[str, ...] = (),
                  on_eval: StopAt | None = None) -> None:
    from bench.core.registry import import_plugins
    from bench.measure import reproducible
    from bench.run.cell import run_cell

    try:
        import_plugins(plugins)  # a fresh process knows only the built-in plugins
        reproducible.enter_worker(threads)
        conn.send(run_cell(cell, data, device, results_dir, on_eval))
    except Exception as err:  # sent back and raised in the parent
        conn.send(err)
    conn.close()


def _run_pinned(cell, data, device, results_dir, threads: int, plugins: tuple[str, ...] = (),
                on_eval: StopAt | None = None) -> ResultRecord:
    """``run_cell`` in a fresh process with the pinned kernels (the mode needs a process
    that has run no kernel yet)."""
    import multiprocessing

    from bench.measure import reproducible

    reproducible.export_env()
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_pinned_child, args=(cell, data, device, results_dir, threads, send, plugins, on_eval))
    proc.start()
    send.close()
    try:
        out = recv.recv()
    except EOFError:
        proc.join()
        out = RuntimeError(f"the re-run's process died (exit code {proc.exitcode})")
    proc.join()
    if isinstance(out, BaseException):
        raise out
    return out


def stored_cell(record: ResultRecord) -> Cell:
    """The cell a record's stored config describes. The record is untrusted: every key,
    type and bound is checked as a suite file's would be (ConfigError naming the field),
    so a hostile row cannot reach the trainer with, say, a list for its training options."""
    from bench.core.config import TrainConfig, check_fields
    from bench.run.matrix import Cell, check_point
    from bench.run.search import selection_problem

    where = f"cell {record.cell_id}: stored config"
    cell = check_fields(Cell, {**record.config, "suite": record.suite}, where)
    check_fields(TrainConfig, cell.train, f"{where} train")
    check_point(where, cell.prefix_length, cell.seed)
    selection: dict = {}
    if cell.search:  # a final cell ran with the lr its search chose: in the row, not in the id
        problem = selection_problem(record.search)
        if problem:
            raise ConfigError(f"{where}: a final cell of a learning-rate search, but {problem}")
        selection = dict(record.search)
    return dataclasses.replace(cell, selection=selection)


def _recorded_threads(record: ResultRecord, default: int) -> int:
    """The thread count a pinned row ran with, checked: the row is untrusted input."""
    from bench.core.config import LIMITS

    raw = record.kernels.get("threads") or str(default)
    if not re.fullmatch(r"[0-9]{1,6}", raw) or not 1 <= int(raw) <= LIMITS["threads"][0]:
        raise ConfigError(f"cell {record.cell_id}: its kernels record threads = {raw!r}, not a thread count "
                          f"in 1..{LIMITS['threads'][0]}")
    return int(raw)


def reproduce(record: ResultRecord, data, device, tolerance: float = DEFAULT_TOLERANCE,
              results_dir: Path | None = None, plugins: tuple[str, ...] = ()) -> Reproduction:
    """Re-run ``record``'s cell (nothing is appended to any records file), in reproducible
    mode when the record was made in it."""
    from bench.core.identity import cell_identity, identity_changes
    from bench.measure import reproducible
    from bench.run.cell import run_cell
    from bench.run.validate import validate_cells
    from methods import METHODS
    from tasks import cell_task

    if "identity" not in record.config:
        raise ConfigError(f"cell {record.cell_id} was recorded before cell ids covered the code (schema 1): "
                          "it cannot be rebuilt faithfully; run its suite again")
    cell = stored_cell(record)
    if cell.id != record.cell_id:
        raise ConfigError(f"cell {record.cell_id}: its stored config hashes to {cell.id}; the record was edited "
                          "or written by an incompatible version, so it cannot be reproduced faithfully")
    validate_cells([cell], data)
    # the same options under today's code: a code change is reported, as the usual reason a number moves
    now = dataclasses.replace(cell, identity=cell_identity(METHODS.get(cell.method), cell_task(cell)))
    if reproducible.is_pinned(record.kernels):
        threads = _recorded_threads(record, reproducible.DEFAULT_THREADS)
        rerun = _run_pinned(now, data, device, results_dir, threads, plugins, StopAt.of(record))
    else:
        rerun = run_cell(now, data, device, results_dir, StopAt.of(record))
    return Reproduction(record, rerun, tolerance, tuple(identity_changes(cell.identity, now.identity)))


def cmd_reproduce(args: argparse.Namespace) -> int:
    from bench.measure.provenance import pick_device
    from tasks import DataSettings

    if args.tolerance is not None and not 0 <= args.tolerance < math.inf:  # nan: nothing would reproduce
        raise ConfigError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    results = Path(args.results) if args.results else Path("results") / "runs" / check_name("suite", args.suite,
                                                                                          "--suite")
    record = find_record(results, args.cell_id)
    tolerance = args.tolerance
    if tolerance is None and record.device.startswith("cuda"):
        tolerance, seeds = seed_spread_tolerance(read_records(results)[0], record)
        if math.isnan(tolerance):
            raise ConfigError(f"cell {record.cell_id} ran on CUDA, whose kernels are not bit-reproducible: judging "
                              f"a re-run needs rows of at least 2 seeds in {results} (found {seeds}); "
                              "or give --tolerance")
        print(f"CUDA row: tolerance = {SPREAD_FACTOR:g} x the std of its {seeds} seeds = {tolerance:.6g}")
    elif tolerance is None:
        tolerance = DEFAULT_TOLERANCE
    try:
        device = pick_device(args.device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    print(f"reproducing {record.cell_id}: {record.method} {record.task} {record.backbone} "
          f"P={record.prefix_length} seed={record.seed}")
    scratch = Path(args.keep) if args.keep else None
    rep = reproduce(record, DataSettings.from_env(args.data_dir), device, tolerance, scratch,
                    tuple(getattr(args, "plugin", None) or ()))
    print(f"recorded {record.main_metric} = {record.main_score!r}")
    print(f"re-run   {rep.rerun.main_metric} = {rep.rerun.main_score!r}")
    print(f"delta {rep.delta:+.6g}, tolerance {tolerance:g}; final loss "
          f"{record.final_loss!r} -> {rep.rerun.final_loss!r}")
    for change in rep.environment_changes():
        print(f"  environment: {change}")
    if rep.ok:
        print(f"REPRODUCED {record.cell_id}")
        return 0
    print(f"NOT REPRODUCED {record.cell_id}: |delta| {abs(rep.delta):.6g} > {tolerance:g}", file=sys.stderr)
    return 1


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="re-run one recorded cell and check its metric is within tolerance")
    p.add_argument("cell_id", help="the record's cell_id (a unique prefix is enough)")
    p.add_argument("--results", default=None, help="records folder (default: results/runs/SUITE)")
    p.add_argument("--suite", default="default", help="suite whose default records folder to read")
    p.add_argument("--tolerance", type=float, default=None,
                   help=f"largest allowed |re-run - recorded| of the main metric (default {DEFAULT_TOLERANCE:g}; "
                        f"for a CUDA row {SPREAD_FACTOR:g} x the std of its seeds' rows)")
    p.add_argument("--data-dir", default=None, help="offline data folder (default $PREFIX_BENCH_DATA_DIR)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--keep", default=None, help="folder for the re-run's adapter and curves (default: discard)")
    p.set_defaults(func=cmd_reproduce)
