"""Crash safety: whole rows under concurrent writers, torn lines reported and survived,
``kill -9`` of a running matrix at random moments loses no finished cell, and failures
(non-finite loss, exceptions, out of memory) are rows while the matrix goes on."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.core.records import RECORDS_FILE, ResultRecord, append_record, finished_ids, read_records, write_atomic
from bench.run.driver import run_cells
from bench.run.matrix import load_suite

REPO = Path(__file__).resolve().parent.parent


def _record(cell_id: str, status: str = "ok", pad: int = 0) -> ResultRecord:
    return ResultRecord(cell_id=cell_id, suite="s", method="lora", task="glue/sst2", backbone="tiny-llama",
                        prefix_length=None, seed=0, status=status, data_notes="x" * pad)


def _writer(results_dir: str, worker: int, n: int) -> None:
    for i in range(n):
        # rows far larger than PIPE_BUF (4 KiB): atomicity must come from the lock + one write
        append_record(results_dir, _record(f"w{worker}-{i}", pad=20_000 + 997 * i))


def test_concurrent_writers_never_tear_or_duplicate(tmp_path):
    ctx = multiprocessing.get_context("fork")  # no torch work in the children: fork is fine
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    lines = (tmp_path / RECORDS_FILE).read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends on a newline
    ids = [json.loads(line)["cell_id"] for line in lines[:-1]]  # every line is one whole row
    assert sorted(ids) == sorted(f"w{w}-{i}" for w in range(4) for i in range(40))


def test_torn_last_line_is_reported_and_appending_goes_on(tmp_path):
    append_record(tmp_path, _record("a"))
    full = _record("b").to_json()
    with open(tmp_path / RECORDS_FILE, "a") as f:
        f.write(full[: len(full) // 2])  # what a crash in the middle of a write would leave
    records, problems = read_records(tmp_path)
    assert [r.cell_id for r in records] == ["a"]
    assert len(problems) == 1 and f"{RECORDS_FILE}:2" in problems[0] and "torn" in problems[0]
    append_record(tmp_path, _record("c"))
    records, problems = read_records(tmp_path)
    assert [r.cell_id for r in records] == ["a", "c"]  # the new row did not glue onto the torn one
    assert len(problems) == 1 and f"{RECORDS_FILE}:2" in problems[0]
    assert finished_ids(records) == {"a", "c"}


def test_write_atomic_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "adapters" / "x.safetensors"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["x.safetensors"]


N_KILL_CELLS = 16  # 2 methods x 8 seeds
KILL_SUITE = """
[suites.kill]
description = "kill -9 test: 16 tiny cells"
methods = ["prompt_tuning", "lora"]
tasks = ["glue/sst2"]
backbones = ["tiny-llama"]
prefix_lengths = [2]
seeds = [0, 1, 2, 3, 4, 5, 6, 7]
train = { train_steps = 30, batch_size = 4, eval_limit = 16, train_limit = 64, max_length = 32 }
"""


def _rows(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_kill_9_at_random_moments_loses_no_finished_cell(tmp_path, data_dir):
    suite = tmp_path / "kill.toml"
    suite.write_text(KILL_SUITE)
    results = tmp_path / "run"
    store = results / RECORDS_FILE
    cmd = [sys.executable, "-m", "bench", "run", "--config", str(suite), "--suite", "kill",
           "--results", str(results), "--no-render", "--device", "cpu", "--threads", "1"]
    env = dict(os.environ, PREFIX_BENCH_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    seed = int(os.environ.get("KILL_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    kills = 0
    for _ in range(3):
        before = _rows(store)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        # wait for this run to finish a cell, then kill it a random moment later: mid-cell,
        # mid-evaluation, mid-write of an adapter or a row
        while _rows(store) == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))  # short: a quiet machine runs a tiny cell in well under a second
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    records, problems = read_records(results)
    assert problems == [], f"seed {seed}: {problems}"  # no torn rows
    finished_before = finished_ids(records)
    assert kills >= 1 and len(finished_before) < N_KILL_CELLS, f"seed {seed}: the kills came too late to test anything"

    final = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    # the re-run executes only the unfinished cells
    assert f"{len(finished_before)} already finished, {N_KILL_CELLS - len(finished_before)} to run" in final.stdout, \
        f"seed {seed}: {final.stdout[-1500:]}"
    records, problems = read_records(results)
    assert problems == []
    ok = [r for r in records if r.status == "ok"]
    cells = [c.pinned(1, False, "random-init") for c in load_suite(suite, "kill")]  # as run: --threads 1
    assert sorted(r.cell_id for r in ok) == sorted(c.id for c in cells), f"seed {seed}: each cell exactly once"
    assert all(r.status == "ok" for r in records)  # a kill is not a failure: nothing else was written
    from safetensors.torch import load_file
    for r in ok:
        assert load_file(r.adapter_path)  # every finished cell's adapter is whole


@pytest.fixture
def faulty():
    from bench.core.registry import import_plugins
    from methods import METHODS

    import_plugins(["faulty_plugin"])
    yield "test_faulty"
    METHODS._items.pop("test_faulty", None)
    sys.modules.pop("faulty_plugin", None)


def test_failing_cells_are_rows_and_retry_failed_reruns_only_them(faulty, data, tmp_path):
    """Non-finite loss (lr = 1e30), an exception and an out-of-memory error each give a
    failed row naming the error; the other cells finish; --retry-failed re-runs only those."""
    from bench.run.matrix import expand

    train = {"train_steps": 3, "batch_size": 4, "eval_limit": 16, "train_limit": 64, "max_length": 32}
    doc = {"suites": {
        "ok": {"methods": ["prompt_tuning"], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
               "prefix_lengths": [2], "seeds": [0], "train": train},
        # lr = 1e30 blows the prefix up: in fp32 the loss turns NaN (trainer: NonFiniteLossError);
        # bf16's autocast keeps softmax in fp32 and may stay finite, so the cell pins fp32
        "nan": {"methods": ["prefix_tuning"], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
                "prefix_lengths": [2], "seeds": [0], "train": {**train, "lr": 1e30, "precision": "fp32"}},
        "raise": {"methods": [faulty], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
                  "prefix_lengths": [2], "seeds": [0], "train": train},
        "oom": {"methods": [faulty], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
                "prefix_lengths": [2], "seeds": [1], "train": train,
                "method_args": {faulty: {"mode": "memory"}}},
    }}
    cells = [c for name in ("ok", "nan", "raise", "oom") for c in expand(doc, name)]
    log: list[str] = []
    counts = run_cells(cells, tmp_path, data, "cpu", log=log.append)
    assert counts == {"cells": 4, "skipped": 0, "ran": 4, "failed": 3}, log
    by_suite = {r.suite: r for r in read_records(tmp_path)[0]}
    assert by_suite["ok"].status == "ok"
    assert by_suite["nan"].status == "failed" and "NonFiniteLossError" in by_suite["nan"].error
    assert by_suite["raise"].status == "failed" and "deliberate failure" in by_suite["raise"].error
    assert by_suite["oom"].status == "failed" and "MemoryError" in by_suite["oom"].error

    log.clear()
    again = run_cells(cells, tmp_path, data, "cpu", log=log.append, retry_failed=True)
    assert again == {"cells": 4, "skipped": 1, "ran": 3, "failed": 3}, log
    records, _ = read_records(tmp_path)
    assert [r.suite for r in records].count("ok") == 1  # the finished cell did not run again
    assert len(records) == 7
