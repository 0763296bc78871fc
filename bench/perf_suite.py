"""`python -m bench.perf_suite`: the wall time of a whole suite as its user waits for it
(`nox -s perf`'s last part; default: the default suite, what `nox -s bench` runs).

``prefix-bench run`` runs in a child process, tables rendered, into fresh folders, so no cell
is skipped as finished. The report holds the wall seconds, the cells (ok, failed), the
seconds the cells spent training and evaluating (the rest is loading, attaching, saving,
rendering and the child's start), and the precisions the rows trained in. A machine shared
with another job makes the wall time meaningless: compare two of these only from one quiet
machine, and pair them (``results/perf/default-bench-wall/``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

from bench.core.records import read_records
from bench.measure import provenance
from bench.run.driver import clock


def time_suite(suite: str, config: str | None = None, extra: tuple[str, ...] = (),
               log_path: Path | None = None) -> dict[str, Any]:
    """Run ``suite`` from scratch in a child ``prefix-bench run`` and time it."""
    with tempfile.TemporaryDirectory(prefix="perf-suite-") as tmp:
        cmd = [sys.executable, "-m", "bench", "run", "--suite", suite, "--results", f"{tmp}/records",
               "--tables", f"{tmp}/tables", "--quiet", *(["--config", config] if config else []), *extra]
        started = provenance.now()
        t0 = time.perf_counter()
        with open(log_path or os.devnull, "w", encoding="utf-8") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        wall = time.perf_counter() - t0
        rows, _ = read_records(Path(tmp) / "records")
        rendered = (Path(tmp) / "tables" / "leaderboard.md").is_file()
    sha, dirty = provenance.git_state()
    return {"suite": suite, "config": config or "bench/suites.toml", "args": list(extra), "exit_status": rc,
            "wall_seconds": wall, "cells": len(rows), "ok": sum(r.status == "ok" for r in rows),
            "failed": sum(r.status != "ok" for r in rows),
            "train_seconds": sum(r.train_seconds or 0.0 for r in rows),
            "eval_seconds": sum(r.eval_seconds or 0.0 for r in rows),
            "precisions": sorted({r.precision for r in rows if r.precision}),
            "devices": sorted({r.device for r in rows if r.device}), "rendered": rendered,
            "git_sha": sha, "git_dirty": dirty, "started_at": started, "finished_at": provenance.now()}


def markdown(report: dict[str, Any]) -> str:
    cells = report["train_seconds"] + report["eval_seconds"]
    row = {"suite": report["suite"], "wall": clock(report["wall_seconds"]),
           "cells (ok / failed)": f"{report['cells']} ({report['ok']} / {report['failed']})",
           "training + evaluation": f"{clock(cells)} ({cells / report['wall_seconds']:.0%} of the wall)"
           if report["wall_seconds"] > 0 else "-",
           "precision": ", ".join(report["precisions"]) or "-", "device": ", ".join(report["devices"]) or "-"}
    return "\n".join([
        f"# Wall time of the `{report['suite']}` suite", "",
        f"`prefix-bench run --suite {report['suite']}` from scratch, tables rendered, in a child process; "
        f"git {report['git_sha'][:10]}{' (dirty)' if report['git_dirty'] else ''}, {report['started_at']}; "
        f"exit status {report['exit_status']}. Meaningful only on a machine no other job shares.", "",
        tabulate([row], headers="keys", tablefmt="github"), ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf_suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="default", help="suite to time (default: default)")
    p.add_argument("--config", default=None, help="suite TOML file (default: bench/suites.toml)")
    p.add_argument("--out", default="results/perf/suite-wall", help="folder for suite_wall.md and .json")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16-mixed"), default=None,
                   help="every cell's precision, in place of the suite's")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    args = p.parse_args(argv)
    extra = tuple(a for flag, v in (("--precision", args.precision), ("--device", args.device)) if v
                  for a in (flag, v))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"perf_suite: running the {args.suite} suite from scratch (its log: {out / 'run.log'}) ...", flush=True)
    report = time_suite(args.suite, args.config, extra, out / "run.log")
    text = markdown(report)
    (out / "suite_wall.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "suite_wall.md").write_text(text, encoding="utf-8")
    print(text)
    return 0 if report["exit_status"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
