"""Reproducible mode (``run --deterministic``, bench/measure/reproducible.py).

Without it, the instruction set ATen picks changes a tiny cell's trained bits; with it,
runs started under different ambient settings give the same bits, the settings reach the
``subprocess`` and Ray workers, and the row says which kernels made it. A pinned row is
re-run pinned by ``reproduce``; a CUDA row is judged against its seeds' spread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core.records import ResultRecord
from bench.measure import reproducible
from bench.run.rerun import seed_spread_tolerance

SUITE = """
[suites.x]
methods = ["prefix_tuning"]
tasks = ["glue/sst2"]
backbones = ["tiny-llama"]
prefix_lengths = [2]
seeds = [0]
train = { train_steps = 3, batch_size = 4, eval_limit = 16, train_limit = 64, max_length = 32 }
"""


def run_cell_cli(tmp_path: Path, name: str, env: dict[str, str], *args: str) -> tuple[dict, str]:
    """One tiny cell through the real CLI in a fresh interpreter; (row, adapter sha256)."""
    toml = tmp_path / "s.toml"
    toml.write_text(SUITE)
    results = tmp_path / name
    full_env = {k: v for k, v in os.environ.items() if k not in reproducible.PINNED_ENV}
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--config", str(toml), "--suite", "x",
                           "--results", str(results), "--no-render", "--quiet", *args],
                          env={**full_env, **env}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = (results / "records.jsonl").read_text().splitlines()
    row = json.loads(line)
    assert row["status"] == "ok", row["error"]
    return row, hashlib.sha256(Path(row["adapter_path"]).read_bytes()).hexdigest()


needs_data = pytest.mark.skipif(not os.environ.get("PREFIX_BENCH_DATA_DIR"), reason="needs offline GLUE data")


@needs_data
def test_isa_changes_bits_without_the_mode_and_not_with_it(tmp_path: Path) -> None:
    # "default" (no vector kernels) exists on every x86 machine; AVX2 is the mode's level
    a_row, a = run_cell_cli(tmp_path, "avx2", {"ATEN_CPU_CAPABILITY": "avx2"}, "--threads", "1")
    b_row, b = run_cell_cli(tmp_path, "scalar", {"ATEN_CPU_CAPABILITY": "default"}, "--threads", "1")
    assert (a_row["kernels"]["aten_cpu_capability"], b_row["kernels"]["aten_cpu_capability"]) == ("AVX2", "DEFAULT")
    assert a != b, "two instruction sets gave the same bits: the test cannot show the mode's effect"

    c_row, c = run_cell_cli(tmp_path, "mode-a", {"ATEN_CPU_CAPABILITY": "default"}, "--deterministic")
    d_row, d = run_cell_cli(tmp_path, "mode-b", {"MKL_CBWR": "COMPATIBLE"}, "--deterministic",
                            "--executor", "subprocess")
    assert c == d
    for row in (c_row, d_row):
        assert reproducible.is_pinned(row["kernels"]) and row["kernels"]["threads"] == "2"
        assert row["kernels"]["cpu_model"]


@needs_data
@pytest.mark.slow  # starting Ray: ~30-50 s on 2 busy cores
def test_the_mode_reaches_ray_workers(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    row, _ = run_cell_cli(tmp_path, "ray", {}, "--deterministic", "--executor", "ray")
    assert reproducible.is_pinned(row["kernels"])


def test_a_worker_that_ran_kernels_before_the_mode_refuses() -> None:
    code = ("import os, torch; torch.ones(3).exp();"
            "from bench.measure import reproducible; reproducible.export_env(); reproducible.enter_worker(1)")
    env = {k: v for k, v in os.environ.items() if k not in reproducible.PINNED_ENV}
    env["ATEN_CPU_CAPABILITY"] = "default"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "ReproducibilityError" in proc.stderr


def _row(seed: int, score: float, device: str = "cuda:H100") -> ResultRecord:
    return ResultRecord(cell_id=f"c{seed}", suite="s", method="m", task="t", backbone="b", prefix_length=5,
                        seed=seed, status="ok", main_score=score, device=device)


def test_cuda_rows_are_judged_against_their_seeds_spread() -> None:
    rows = [_row(0, 0.80), _row(1, 0.84), _row(2, 0.82)]
    tol, n = seed_spread_tolerance(rows, rows[0])
    assert n == 3 and tol == pytest.approx(2 * 0.02)
    other = dataclasses.replace(rows[2], cell_id="x", prefix_length=20, main_score=0.1)
    assert seed_spread_tolerance([rows[0], other], rows[0])[1] == 1  # another prefix length is no sibling
