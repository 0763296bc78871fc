"""``prefix-bench compare A B``: what changed between two results folders, per cell.

A cell key is (method, task, backbone, prefix_length); seeds are aggregated (mean, 95%
t-interval, n). B is judged against A (the baseline):
- metric regression: B's mean falls outside A's CI in the worse direction and moves more
  than ``--min-delta``;
- throughput regression: B's train tokens/s below ``--throughput-ratio`` x A's;
- memory regression: B's peak memory above ``--memory-ratio`` x A's;
- a run of the cell failed in B, or recorded a NaN/inf main score (``bench/report/failures.py``);
  the ok seeds, if any, are still compared;
- the cell is missing from B: A has a run of it (ok or failed), B has none (``--allow-missing``
  lists such cells without failing, for a B that ran part of A's matrix on purpose).
Cells only in B are listed, not flagged (unless they failed). Exit status 1 names every
regressed cell with its reason; 0 otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench.core.config import ConfigError
from bench.core.outcome import NON_FINITE
from bench.core.record_check import problem_summary
from bench.core.records import read_records, result_rows
from bench.core.task_facts import Facts, higher_is_better
from bench.report.escape import map_text, markdown
from bench.report.stats import summarize
from bench.report.views import failed_frame, records_frame

KEY = ["method", "task", "backbone", "prefix_length"]
TABLE_COLUMNS = ["cell", "metric", "A", "A 95% CI", "B", "Δ", "tok/s B/A", "memory B/A", "flags"]


@dataclass(frozen=True)
class Thresholds:
    min_delta: float = 0.0
    throughput_ratio: float = 0.8
    memory_ratio: float = 1.2

    def __post_init__(self) -> None:
        for name in ("min_delta", "throughput_ratio", "memory_ratio"):
            if not math.isfinite(getattr(self, name)):  # nan compares false: it would flag nothing
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}")
        if self.min_delta < 0:
            raise ConfigError(f"--min-delta must be >= 0, got {self.min_delta}")
        if not 0 < self.throughput_ratio <= 1:
            raise ConfigError(f"--throughput-ratio must be in (0, 1], got {self.throughput_ratio}")
        if self.memory_ratio < 1:
            raise ConfigError(f"--memory-ratio must be >= 1, got {self.memory_ratio}")


def cell_name(row: pd.Series | dict) -> str:
    p = row["prefix_length"]
    plen = "none" if p is None or (isinstance(p, float) and math.isnan(p)) else str(int(p))
    return f"{row['method']}/{row['task']}/{row['backbone']}/P={plen}"


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell key: score summary over seeds, mean throughput, max peak memory."""
    rows = []
    key = df["prefix_length"].astype(object).where(df["prefix_length"].notna(), None)
    for (method, task, backbone, plen), g in df.groupby([df["method"], df["task"], df["backbone"], key],
                                                       dropna=False):
        s = summarize(g["main_score"])
        rows.append({"method": method, "task": task, "backbone": backbone,
                     "weights": ", ".join(sorted({w for w in g.get("weights", pd.Series(dtype=str)) if w})),
                     "prefix_length": None if pd.isna(plen) else int(plen), "metric": g["main_metric"].iloc[0],
                     "mean": s.mean, "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n,
                     "seeds": ",".join(str(x) for x in sorted(g["seed"])),
                     "tok_s": float(g["train_tokens_per_s"].mean()), "memory": float(g["peak_memory_bytes"].max())})
    return pd.DataFrame(rows)


def failed_by_cell(failed: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """A ``failed_frame`` split by cell name."""
    if failed is None or failed.empty:
        return {}
    names = [cell_name(r) for _, r in failed.iterrows()]
    return {n: failed[[x == n for x in names]] for n in sorted(set(names))}


def failure_reasons(name: str, bad: pd.DataFrame, ok_runs: int) -> list[str]:
    """One regression message per kind of failure of cell ``name`` in B."""
    out = []
    runs = ok_runs + len(bad)
    for kind, g in bad.groupby("kind", sort=True):
        errors = "; ".join(f"seed {s}: {' '.join(str(e).split())[:200]}" for s, e in zip(g["seed"], g["error"],
                                                                                         strict=True))
        what = "main score became NaN/inf in B" if kind == NON_FINITE else "failed in B"
        out.append(f"{name}: {what} ({len(g)} of {runs} run(s)): {errors}")
    return out


def _shown(r: pd.Series | None, failed: int) -> str:
    text = "—" if r is None else f"{r['mean']:.4f} (n={r['n']})"
    return f"{text}; {failed} failed" if failed else text


def compare_frames(a: pd.DataFrame, b: pd.DataFrame, th: Thresholds, a_failed: pd.DataFrame | None = None,
                   b_failed: pd.DataFrame | None = None, allow_missing: bool = False,
                   facts: Facts | None = None) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Per-cell comparison rows, the regressions (messages naming cells and the reason),
    and cells only in A (regressions too, unless ``allow_missing``) or only in B.
    ``a_failed`` and ``b_failed`` are the folders' ``failed_frame``s."""
    aa, bb = aggregate(a), aggregate(b)
    index_a = {cell_name(r): r for _, r in aa.iterrows()}
    index_b = {cell_name(r): r for _, r in bb.iterrows()}
    different = sorted(f"{n} (A: {index_a[n]['weights'] or 'unknown'}, B: {index_b[n]['weights'] or 'unknown'})"
                       for n in set(index_a) & set(index_b)
                       if index_a[n]["weights"] and index_b[n]["weights"]
                       and index_a[n]["weights"] != index_b[n]["weights"])
    if different:  # e.g. the offline 4-bit SmolLM2 against the hub's bf16 checkpoint: not one model
        raise ConfigError(f"A and B ran different weights of the same backbone, so their numbers are not "
                          f"comparable: {'; '.join(different[:5])}" + (f" and {len(different) - 5} more"
                                                                     if len(different) > 5 else ""))
    fail_a, fail_b = failed_by_cell(a_failed), failed_by_cell(b_failed)
    cells_a, cells_b = set(index_a) | set(fail_a), set(index_b) | set(fail_b)
    rows, regressions = [], []
    only_a, only_b = sorted(cells_a - cells_b), sorted(cells_b - cells_a)
    missing = [f"{n}: only in A" for n in only_a] + [f"{n}: only in B" for n in only_b]
    if not allow_missing:
        regressions += [f"{n}: missing in B (A has a run of it, B has none)" for n in only_a]
    for name in sorted(cells_b):
        bad = fail_b.get(name)
        if bad is not None:
            regressions += failure_reasons(name, bad, int(index_b[name]["n"]) if name in index_b else 0)
    for name in sorted(cells_a & cells_b):
        ra, rb = index_a.get(name), index_b.get(name)
        na, nb = len(fail_a.get(name, ())), len(fail_b.get(name, ()))
        if ra is None or rb is None:  # every run failed on one side: no numbers to compare
            metric = next((r["metric"] for r in (ra, rb) if r is not None), "")
            rows.append(dict.fromkeys(TABLE_COLUMNS, "") | {
                "cell": name, "metric": metric, "A": _shown(ra, na), "B": _shown(rb, nb),
                "flags": "failed in B" if rb is None else "failed in A, ok in B"})
            continue
        hib = higher_is_better(facts or {}, ra["task"], ra["metric"])
        delta = rb["mean"] - ra["mean"]
        worse = -delta if hib else delta
        outside = not (ra["ci_low"] <= rb["mean"] <= ra["ci_high"])
        flags = []
        if outside and abs(delta) > th.min_delta:
            flags.append("metric worse" if worse > 0 else "metric better")
        tok_ratio = rb["tok_s"] / ra["tok_s"] if ra["tok_s"] > 0 else math.nan
        mem_ratio = rb["memory"] / ra["memory"] if ra["memory"] > 0 else math.nan
        if tok_ratio < th.throughput_ratio:
            flags.append(f"throughput x{tok_ratio:.2f}")
        if mem_ratio > th.memory_ratio:
            flags.append(f"memory x{mem_ratio:.2f}")
        if nb:
            flags.append("failed in B" if not na else "failed in A and B")
        bad = [f for f in flags if f not in ("metric better", "failed in B", "failed in A and B")]
        if bad:
            regressions.append(
                f"{name}: {'; '.join(bad)} ({ra['metric']} {ra['mean']:.4f} [CI {ra['ci_low']:.4f}–"
                f"{ra['ci_high']:.4f}, n={ra['n']}] -> {rb['mean']:.4f} [n={rb['n']}])")
        rows.append({"cell": name, "metric": ra["metric"], "A": _shown(ra, na),
                     "A 95% CI": f"{ra['ci_low']:.4f}–{ra['ci_high']:.4f}" if ra["n"] > 1 else "— (n=1)",
                     "B": _shown(rb, nb),
                     "Δ": f"{delta:+.4f}", "tok/s B/A": f"{tok_ratio:.2f}", "memory B/A": f"{mem_ratio:.2f}",
                     "flags": ", ".join(flags) or "ok"})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS), regressions, missing


def _load(folder: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The folder's usable runs and its failed runs."""
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"results folder {folder} does not exist")
    records, problems = read_records(path)
    if problems:
        print(problem_summary(problems), file=sys.stderr)
    records = result_rows(records)  # search trials are not results
    df, failed = records_frame(records), failed_frame(records)
    left_out = sum(df.attrs["left_out"].values())
    if left_out:
        print(f"warning: {folder}: left out {left_out} older row(s) at cells with newer rows of other "
              "options, code or data (never averaged together)", file=sys.stderr)
    if df.empty and failed.empty:
        raise ConfigError(f"results folder {folder} holds no records (records.jsonl)")
    return df, failed


def cmd_compare(args: argparse.Namespace) -> int:
    th = Thresholds(args.min_delta, args.throughput_ratio, args.memory_ratio)
    (a, a_failed), (b, b_failed) = _load(args.a), _load(args.b)
    table, regressions, missing = compare_frames(a, b, th, a_failed, b_failed, args.allow_missing,
                                                 getattr(args, "task_facts", None))
    if len(table):
        # names come from records: escaped so a "|" or newline cannot break the table
        print(tabulate(map_text(table, markdown), headers="keys", tablefmt="github", showindex=False,
                       disable_numparse=True))
    for m in missing:
        print(f"missing: {m}")
    for r in regressions:
        print(f"REGRESSION {r}", file=sys.stderr)
    if regressions:
        print(f"{len(regressions)} regression(s)", file=sys.stderr)
        return 1
    print(f"no regression in {len(table)} shared cell(s)")
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare two results folders cell by cell; exit 1 on regression",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="baseline results folder (holding records.jsonl)")
    p.add_argument("b", help="candidate results folder")
    p.add_argument("--min-delta", type=float, default=0.0,
                   help="ignore metric moves smaller than this, even outside A's CI (default 0)")
    p.add_argument("--throughput-ratio", type=float, default=0.8,
                   help="flag B's train tokens/s below this fraction of A's (default 0.8)")
    p.add_argument("--memory-ratio", type=float, default=1.2,
                   help="flag B's peak memory above this multiple of A's (default 1.2)")
    p.add_argument("--allow-missing", action="store_true",
                   help="list cells of A missing from B without failing (B ran part of the matrix on purpose)")
    p.add_argument("--fail-on-missing", action="store_true",
                   help="the default now (a cell of A missing from B is a regression); kept for old scripts")
    p.set_defaults(func=cmd_compare, needs_task_facts=True)
