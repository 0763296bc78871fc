"""``prefix-bench reproduce CELL_ID``: re-run one recorded cell from the resolved config
stored in its record and say whether the main metric comes back within tolerance.

The stored config is the cell's whole identity (its id is a hash of it, code identity
included), so the re-run rebuilds exactly that cell's options; a config whose hash no longer
matches the id (an edited file) is refused. The re-run uses today's code: code changes since
the record (bench/identity.py) and environment differences (git commit, package versions,
device) are printed beside the verdict, because they are the usual reason a number moves.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.config import ConfigError
from bench.records import ResultRecord, latest_by_cell, read_records

DEFAULT_TOLERANCE = 1e-6  # CPU runs are deterministic here; raise it for GPU kernels


@dataclass(frozen=True)
class Reproduction:
    record: ResultRecord
    rerun: ResultRecord
    tolerance: float
    code_changes: tuple[str, ...] = ()  # identity parts that differ from the record's (bench/identity.py)

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
        for pkg in sorted(set(a.versions) | set(b.versions)):
            if a.versions.get(pkg) != b.versions.get(pkg):
                out.append(f"{pkg} {a.versions.get(pkg, '-')} -> {b.versions.get(pkg, '-')}")
        return out


def find_record(results_dir: Path, cell_id: str) -> ResultRecord:
    """The newest finished record whose id starts with ``cell_id`` (a unique prefix will do)."""
    records, _ = read_records(results_dir)
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


def reproduce(record: ResultRecord, data, device, tolerance: float = DEFAULT_TOLERANCE,
              results_dir: Path | None = None) -> Reproduction:
    """Re-run ``record``'s cell (nothing is appended to any records file)."""
    from bench.identity import cell_identity, identity_changes
    from bench.matrix import Cell
    from bench.runner import run_cell, validate_cells
    from methods import METHODS
    from tasks import TASKS

    if "identity" not in record.config:
        raise ConfigError(f"cell {record.cell_id} was recorded before cell ids covered the code (schema 1): "
                          "it cannot be rebuilt faithfully; run its suite again")
    try:
        cell = Cell.from_resolved(record.config, suite=record.suite)
    except TypeError as err:
        raise ConfigError(f"cell {record.cell_id}: stored config does not build a cell ({err})") from None
    if cell.id != record.cell_id:
        raise ConfigError(f"cell {record.cell_id}: its stored config hashes to {cell.id}; the record was edited "
                          "or written by an incompatible version, so it cannot be reproduced faithfully")
    validate_cells([cell], data)
    # the same options under today's code: a code change is reported, as the usual reason a number moves
    now = dataclasses.replace(cell, identity=cell_identity(METHODS.get(cell.method), TASKS.get(cell.task)))
    rerun = run_cell(now, data, device, results_dir)
    return Reproduction(record, rerun, tolerance, tuple(identity_changes(cell.identity, now.identity)))


def cmd_reproduce(args: argparse.Namespace) -> int:
    from bench.provenance import pick_device
    from tasks import DataSettings

    if args.tolerance < 0:
        raise ConfigError(f"--tolerance must be >= 0, got {args.tolerance}")
    results = Path(args.results) if args.results else Path("results") / "runs" / args.suite
    record = find_record(results, args.cell_id)
    try:
        device = pick_device(args.device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    print(f"reproducing {record.cell_id}: {record.method} {record.task} {record.backbone} "
          f"P={record.prefix_length} seed={record.seed}")
    scratch = Path(args.keep) if args.keep else None
    rep = reproduce(record, DataSettings.from_env(args.data_dir), device, args.tolerance, scratch)
    print(f"recorded {record.main_metric} = {record.main_score!r}")
    print(f"re-run   {rep.rerun.main_metric} = {rep.rerun.main_score!r}")
    print(f"delta {rep.delta:+.6g}, tolerance {args.tolerance:g}; final loss "
          f"{record.final_loss!r} -> {rep.rerun.final_loss!r}")
    for change in rep.environment_changes():
        print(f"  environment: {change}")
    if rep.ok:
        print(f"REPRODUCED {record.cell_id}")
        return 0
    print(f"NOT REPRODUCED {record.cell_id}: |delta| {abs(rep.delta):.6g} > {args.tolerance:g}", file=sys.stderr)
    return 1


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="re-run one recorded cell and check its metric is within tolerance")
    p.add_argument("cell_id", help="the record's cell_id (a unique prefix is enough)")
    p.add_argument("--results", default=None, help="records folder (default: results/runs/SUITE)")
    p.add_argument("--suite", default="default", help="suite whose default records folder to read")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest allowed |re-run - recorded| of the main metric (default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--data-dir", default=None, help="offline data folder (default $PREFIX_BENCH_DATA_DIR)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--keep", default=None, help="folder for the re-run's adapter and curves (default: discard)")
    p.set_defaults(func=cmd_reproduce)
