"""Claims (bench/run/locks.py): a cell is claimed before it runs, a claim dies with its holder,
a stale claim is taken over, a live one is respected, a worker waits for another process
computing its cell and reuses that row, and the store never takes a second ok row."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from bench.core.records import ResultRecord, append_record, read_records
from bench.run import locks
from bench.run.data import data_fingerprint
from bench.run.driver import run_cells
from bench.run.executors import CellJob, execute_cell
from bench.run.matrix import expand

from ._drivers import REPO, wait_for

TRAIN = {"train_steps": 3, "batch_size": 4, "eval_limit": 16, "train_limit": 64, "max_length": 32}
HOLD = """
import sys
from bench.run import locks
claim = locks.try_claim(sys.argv[1], sys.argv[2])
print("held" if claim else "refused", flush=True)
sys.stdin.readline()
if claim:
    claim.release()
print("released", flush=True)
sys.stdin.readline()
"""


def tiny_cells(seeds=(0, 1)):
    return expand({"suites": {"t": {"methods": ["prompt_tuning"], "tasks": ["glue/sst2"],
                                    "backbones": ["tiny-llama"], "prefix_lengths": [2],
                                    "seeds": list(seeds), "train": dict(TRAIN)}}}, "t")


class Holder:
    """Another process holding the driver's claim on one cell until told to let go."""

    def __init__(self, results: Path, cell_id: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(results), cell_id], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert self.proc.stdout.readline().strip() == "held"

    def let_go(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _pinned(cell, threads=1):
    return cell.pinned(threads, torch.are_deterministic_algorithms_enabled(), "random-init")


def test_a_claim_is_exclusive_and_dies_with_its_holder(tmp_path):
    holder = Holder(tmp_path, "abc123")
    try:
        assert locks.try_claim(tmp_path, "abc123") is None
        who = locks.holder_of(tmp_path, "abc123")
        assert who.pid == holder.proc.pid and who.host == socket.gethostname() and who.alive_here()
    finally:
        holder.stop()  # kill -9: no release, no unlink; the kernel drops the lock
    assert locks.holder_of(tmp_path, "abc123").pid == holder.proc.pid  # the file stays behind
    with locks.try_claim(tmp_path, "abc123") as mine:
        assert mine is not None and locks.holder_of(tmp_path, "abc123").pid == os.getpid()
    assert not (tmp_path / "claims" / "abc123").exists()  # a released claim leaves nothing


def test_a_stale_claim_of_a_dead_pid_is_taken_over_and_the_cell_runs(tmp_path, data):
    dead = subprocess.Popen(["true"])
    dead.wait()
    cells = tiny_cells(seeds=(0,))
    cell_id = _pinned(cells[0]).id
    (tmp_path / "claims").mkdir()
    stale = {"pid": dead.pid, "host": socket.gethostname(), "boot_id": locks._boot_id(),
             "start_ticks": 12345, "since": "2020-01-01T00:00:00+00:00", "role": "driver"}
    (tmp_path / "claims" / cell_id).write_text(json.dumps(stale))
    (tmp_path / "claims" / f"{cell_id}.running").write_text(json.dumps({**stale, "role": "worker"}))
    log: list[str] = []
    counts = run_cells(cells, tmp_path, data, "cpu", log=log.append, threads=1)
    assert counts == {"cells": 1, "skipped": 0, "ran": 1, "failed": 0}, log
    (row,) = read_records(tmp_path)[0]
    assert row.cell_id == cell_id and row.status == "ok"
    assert list((tmp_path / "claims").iterdir()) == []  # both claims taken over, then released


def test_a_live_holder_on_this_host_is_respected_even_without_its_lock(tmp_path):
    """flock ignored by the filesystem looks like an unlocked file naming a live process:
    that process's claim stands. A reused pid (another start time) does not."""
    (tmp_path / "claims").mkdir()
    me = locks.Holder.me("driver")
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        alive = dict(vars(locks.Holder(sleeper.pid, me.host, me.boot_id, locks._start_ticks(sleeper.pid),
                                        me.since, "driver")))
        (tmp_path / "claims" / "c1").write_text(json.dumps(alive))
        assert locks.try_claim(tmp_path, "c1") is None
        (tmp_path / "claims" / "c2").write_text(json.dumps({**alive, "start_ticks": alive["start_ticks"] + 1}))
        with locks.try_claim(tmp_path, "c2") as claim:
            assert claim is not None
    finally:
        sleeper.kill()
        sleeper.wait()
    with locks.try_claim(tmp_path, "c1") as claim:  # the holder has exited now
        assert claim is not None


def test_a_cell_claimed_elsewhere_is_skipped_then_run_once_its_holder_lets_go(tmp_path, data):
    """The second driver runs the other cells, says the claimed one runs elsewhere and looks
    again at the end: if its holder let go without a row, it runs it then."""
    cells = tiny_cells(seeds=(0, 1))
    claimed = _pinned(cells[1]).id
    holder = Holder(tmp_path, claimed)
    log: list[str] = []

    def on_log(line: str) -> None:
        log.append(line)
        if "running elsewhere" in line:
            holder.let_go()  # the holder gives up (say it died) while this driver works

    try:
        counts = run_cells(cells, tmp_path, data, "cpu", log=on_log, threads=1)
    finally:
        holder.stop()
    assert counts == {"cells": 2, "skipped": 0, "ran": 2, "failed": 0}, log
    elsewhere = [line for line in log if "running elsewhere" in line]
    assert len(elsewhere) == 1 and f"driver pid {holder.proc.pid}" in elsewhere[0]
    assert "checked again at the end" in elsewhere[0]
    assert sorted(r.cell_id for r in read_records(tmp_path)[0]) == sorted(_pinned(c).id for c in cells)


def test_a_cell_held_to_the_end_is_left_to_its_holder(tmp_path, data):
    cells = tiny_cells(seeds=(0, 1))
    claimed = _pinned(cells[0]).id
    holder = Holder(tmp_path, claimed)
    log: list[str] = []
    try:
        counts = run_cells(cells, tmp_path, data, "cpu", log=log.append, threads=1)
    finally:
        holder.stop()
    assert counts == {"cells": 2, "skipped": 1, "ran": 1, "failed": 0}, log
    assert [r.cell_id for r in read_records(tmp_path)[0]] == [_pinned(cells[1]).id]
    assert any("left to that run" in line for line in log)
    assert any("1 cell(s) still running elsewhere" in line for line in log)


def _waiting_on(path: Path) -> bool:
    """Some process is blocked in flock on ``path`` (a '->' line of /proc/locks)."""
    inode = os.stat(path).st_ino
    return any("->" in line and f":{inode} " in line for line in Path("/proc/locks").read_text().splitlines())


def test_a_worker_waits_for_another_run_of_its_cell_and_reuses_its_row(tmp_path, data):
    """An orphaned worker of a dead driver still computes the cell: the next run's worker
    waits on the run lock, then finds the orphan's row and trains nothing."""
    cell = _pinned(tiny_cells(seeds=(0,))[0])
    orphan = locks.run_lock(tmp_path, cell.id)
    result: list[ResultRecord] = []
    worker = threading.Thread(target=lambda: result.append(
        execute_cell(cell, CellJob(data, "cpu", str(tmp_path), threads=1))))
    worker.start()
    try:
        wait_for("the worker to block on the run lock", lambda: _waiting_on(orphan.path))
        assert result == [] and read_records(tmp_path)[0] == []
        orphans_row = ResultRecord(cell_id=cell.id, suite="t", method=cell.method, task=cell.task,
                                   backbone=cell.backbone, prefix_length=2, seed=0, status="ok", run_id="orphan",
                                   data_fingerprint=data_fingerprint(cell.task, data))
        append_record(tmp_path, orphans_row, once=True)
    finally:
        orphan.release()
        worker.join(timeout=120)
    assert [r.run_id for r in result] == ["orphan"]
    assert [r.run_id for r in read_records(tmp_path)[0]] == ["orphan"]  # nothing trained, nothing added


def _append_once(results: str, i: int) -> None:
    status = "ok" if i % 2 else "failed"
    append_record(results, ResultRecord(cell_id="same", suite="s", method="m", task="t", backbone="b",
                                        prefix_length=None, seed=0, status=status, run_id=f"w{i}"), once=True)


def test_once_only_append_keeps_one_ok_row_per_cell_under_concurrent_writers(tmp_path):
    ctx = multiprocessing.get_context("fork")  # no torch work in the children: fork is fine
    procs = [ctx.Process(target=_append_once, args=(str(tmp_path), i)) for i in range(12)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    rows = read_records(tmp_path)[0]
    ok = [r for r in rows if r.status == "ok"]
    assert len(ok) == 1
    # failed rows may precede the ok row (retries), never follow it
    assert rows[-1].status == "ok" and all(r.status == "failed" for r in rows[:-1])
    assert append_record(tmp_path, ResultRecord(cell_id="same", suite="s", method="m", task="t", backbone="b",
                                                prefix_length=None, seed=0, status="ok"), once=True) is None
    assert len(read_records(tmp_path)[0]) == len(rows)


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".running"])
def test_claim_names_are_cell_ids_not_paths(tmp_path, bad):
    with pytest.raises(ValueError, match="not a safe file name"):
        locks.try_claim(tmp_path, bad)


def test_once_only_append_is_per_data_a_stale_row_does_not_block_the_rerun(tmp_path):
    """Finished means the newest row is ok on the same data (bench/run/staleness.py): a row on
    other data is stale, and the re-run's row, ok or failed, must go in."""
    def row(status: str, data: str) -> ResultRecord:
        return ResultRecord(cell_id="c", suite="s", method="m", task="t", backbone="b", prefix_length=None,
                            seed=0, status=status, data_fingerprint=data)

    assert append_record(tmp_path, row("ok", "old"), once=True) is not None
    assert append_record(tmp_path, row("failed", "new"), once=True) is not None  # the re-run failed
    assert append_record(tmp_path, row("ok", "new"), once=True) is not None  # --retry-failed
    assert append_record(tmp_path, row("ok", "new"), once=True) is None  # finished on this data
    assert append_record(tmp_path, row("failed", "new"), once=True) is None  # an orphan's late failure
    assert append_record(tmp_path, row("failed", ""), once=True) is None  # one that never read the data
    assert [(r.status, r.data_fingerprint) for r in read_records(tmp_path)[0]] == [
        ("ok", "old"), ("failed", "new"), ("ok", "new")]
