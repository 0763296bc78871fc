"""Helpers for tests that start real ``prefix-bench run`` drivers and kill or interrupt
them: the command line, its environment, and waiting on the filesystem or /proc (never a
fixed sleep: everything polls for a condition with a generous deadline)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bench.core.records import RECORDS_FILE

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
T = TypeVar("T")
# counting_plugin.py's method and log variable; that module is loaded only by the drivers
# (--plugin): importing it here would register its method in the test process as well
COUNTING_METHOD = "test_counting"
COUNTING_LOG_ENV = "COUNTING_PLUGIN_LOG"
COUNTING_HOLD_ENV = "COUNTING_PLUGIN_HOLD"  # counting_plugin.py: cells past seed 0 wait while it exists


def write_suite(tmp_path: Path, seeds: int, steps: int, method: str = "prompt_tuning") -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(f"""
[suites.adv]
methods = ["{method}"]
tasks = ["glue/sst2"]
backbones = ["tiny-llama"]
prefix_lengths = [2]
seeds = {list(range(seeds))}
train = {{ train_steps = {steps}, batch_size = 4, eval_limit = 16, train_limit = 64, max_length = 32 }}
""")
    return path


def run_command(suite: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench", "run", "--config", str(suite), "--suite", "adv",
            "--results", str(results), "--no-render", "--device", "cpu", "--threads", "1", *extra]


def driver_env(data_dir: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, PREFIX_BENCH_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1",
                HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0, every: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def trained_seeds(path: Path) -> list[int]:
    """The seed of every cell that started training under counting_plugin, one per start."""
    try:
        return [int(line.split()[0]) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def rows(results: Path) -> int:
    try:
        return (results / RECORDS_FILE).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def alive(pid: int) -> bool:
    """The process runs (a zombie has exited: only its parent has not collected it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            out.append(int(entry.name))
    return out
