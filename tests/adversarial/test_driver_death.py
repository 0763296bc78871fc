"""Real ``prefix-bench run`` drivers, started together, killed with -9, interrupted with
Ctrl-C, pointed at a read-only folder: every cell ends with exactly one ``ok`` row, trained
once, no worker outlives its driver, and a bad folder is refused before anything trains."""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core.records import RECORDS_FILE, read_records
from bench.run import locks
from bench.run.matrix import load_suite

from ._drivers import (
    COUNTING_HOLD_ENV,
    COUNTING_LOG_ENV,
    COUNTING_METHOD,
    REPO,
    alive,
    children_of,
    driver_env,
    rows,
    run_command,
    trained_seeds,
    wait_for,
    write_suite,
)


def assert_each_cell_once(results: Path, seeds: int, suite: Path | None = None) -> None:
    """One ok row per cell (the suite's cells differ by seed), nothing else, no claim left.
    With ``suite`` (its method known to this process) the ids are checked too."""
    records, problems = read_records(results)
    assert problems == []
    assert [r.status for r in records] == ["ok"] * len(records), [r.error for r in records]
    assert sorted(r.seed for r in records) == list(range(seeds)) and len({r.cell_id for r in records}) == seeds
    if suite is not None:  # as run: --threads 1
        assert sorted(r.cell_id for r in records) == sorted(c.pinned(1, False, "random-init").id for c in load_suite(suite, "adv"))
    assert list((results / "claims").iterdir()) == []  # every claim released


def running_worker(results: Path, not_pid: int | None = None) -> tuple[str, int] | None:
    """(cell id, pid) of a process holding a cell's run lock, i.e. computing it right now."""
    for path in (results / "claims").glob(f"*{locks.RUNNING_SUFFIX}"):
        cell_id = path.name.removesuffix(locks.RUNNING_SUFFIX)
        who = locks.holder_of(results, cell_id, locks.RUNNING_SUFFIX)
        if who is not None and who.pid != not_pid and alive(who.pid):
            return cell_id, who.pid
    return None


def ignores_sigint(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
    return bool(mask & (1 << (signal.SIGINT - 1)))


def test_two_drivers_started_together_train_and_record_each_cell_once(tmp_path, data_dir):
    suite = write_suite(tmp_path, seeds=4, steps=150, method=COUNTING_METHOD)
    results, trained = tmp_path / "run", tmp_path / "trained.log"
    cmd = run_command(suite, results, "--plugin", "counting_plugin")
    env = driver_env(data_dir, **{COUNTING_LOG_ENV: str(trained)})
    drivers = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outs = [d.communicate(timeout=300) for d in drivers]
    for d, (_, err) in zip(drivers, outs, strict=True):
        assert d.returncode == 0, err[-2000:]
    assert_each_cell_once(results, seeds=4)
    assert sorted(trained_seeds(trained)) == [0, 1, 2, 3], outs  # no cell trained twice
    ran = [int(re.search(r"^ran (\d+) cells", out, re.M).group(1)) for out, _ in outs]
    assert sum(ran) == 4, outs  # and what one ran the other counted as skipped


def test_kill_9_of_a_driver_kills_its_worker_and_a_resume_records_each_cell_once(tmp_path, data_dir):
    suite = write_suite(tmp_path, seeds=2, steps=300)
    results = tmp_path / "run"
    cmd = run_command(suite, results, "--executor", "subprocess")
    env = driver_env(data_dir)
    driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cell_id, worker = wait_for("a worker process computing a cell",
                                   lambda: running_worker(results, not_pid=driver.pid), timeout=180)
        family = children_of(driver.pid)  # the worker and multiprocessing's resource tracker
        assert worker in family
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        driver.kill()
    wait_for("the dead driver's processes to exit", lambda: not any(alive(p) for p in family), timeout=60)
    # killed with its driver (PR_SET_PDEATHSIG), not left to finish and write its row
    assert rows(results) == 0 or cell_id not in (results / RECORDS_FILE).read_text()

    resume = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stderr[-2000:]
    assert_each_cell_once(results, seeds=2, suite=suite)


def _terminal_sigint() -> None:
    """Ctrl-C as a terminal delivers it: the default disposition. A shell that starts pytest in
    the background without job control leaves SIGINT ignored, every child inherits that, and a
    Python started with SIGINT ignored never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _drop_write_override() -> None:
    """Run as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH/CAP_FOWNER: permission
    bits then bind root too, so a read-only folder is read-only for the driver."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP; takes effect at exec
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize("read_only", ["folder", "records file"])
def test_a_read_only_results_folder_exits_2_before_any_cell_trains(tmp_path, data_dir, read_only):
    suite = write_suite(tmp_path, seeds=2, steps=3, method=COUNTING_METHOD)
    results, trained = tmp_path / "run", tmp_path / "trained.log"
    results.mkdir()
    (results / RECORDS_FILE).write_text("")
    target = results if read_only == "folder" else results / RECORDS_FILE
    target.chmod(0o555 if read_only == "folder" else 0o444)
    try:
        done = subprocess.run(run_command(suite, results, "--plugin", "counting_plugin"), cwd=REPO,
                              env=driver_env(data_dir, **{COUNTING_LOG_ENV: str(trained)}), capture_output=True,
                              text=True, timeout=300, preexec_fn=_drop_write_override if os.geteuid() == 0 else None)
    finally:
        target.chmod(0o755 if read_only == "folder" else 0o644)
    assert done.returncode == 2, (done.stdout[-1000:], done.stderr[-2000:])
    assert "not writable" in done.stderr and "nothing was run" in done.stderr and str(results) in done.stderr
    assert "Traceback" not in done.stderr
    assert trained_seeds(trained) == [] and "to run" not in done.stdout  # refused before the first cell
    assert (results / RECORDS_FILE).read_text() == ""


@pytest.mark.parametrize("executor", ["local", "subprocess"])
def test_ctrl_c_prints_one_line_exits_130_and_the_run_resumes(tmp_path, data_dir, executor):
    """Ctrl-C in a terminal signals the whole process group: the driver stops after the
    finished rows, discards the cell in flight, and its children print nothing (also not
    at the driver's exit: a worker killed mid-training leaves no semaphore to warn about)."""
    suite = write_suite(tmp_path, seeds=2, steps=300, method=COUNTING_METHOD)
    results, trained, hold = tmp_path / "run", tmp_path / "trained.log", tmp_path / "hold"
    hold.touch()  # the second cell waits in flight until the driver has been signalled
    env = driver_env(data_dir, **{COUNTING_LOG_ENV: str(trained), COUNTING_HOLD_ENV: str(hold)})
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "w") as fo, open(err, "w") as fe:
        driver = subprocess.Popen(run_command(suite, results, "--executor", executor, "--plugin", "counting_plugin"),
                                  cwd=REPO, env=env, stdout=fo, stderr=fe, start_new_session=True,
                                  preexec_fn=_terminal_sigint)
    try:
        not_pid = driver.pid if executor == "subprocess" else None
        _, worker = wait_for("the first row and the second cell training",
                             lambda: rows(results) == 1 and len(trained_seeds(trained)) == 2
                             and running_worker(results, not_pid=not_pid), timeout=180)
        if executor == "subprocess":  # the worker leaves Ctrl-C to its driver
            assert ignores_sigint(worker)
        family = children_of(driver.pid)
        os.killpg(driver.pid, signal.SIGINT)
        assert driver.wait(timeout=120) == 130
    finally:
        hold.unlink(missing_ok=True)  # the resumed run's cell trains through
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    wait_for("the driver's children to exit", lambda: not any(alive(p) for p in family), timeout=60)
    stderr = err.read_text()
    assert "Traceback" not in stderr + out.read_text()
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("prefix-bench: interrupted;") and str(results) in line, stderr
    records, problems = read_records(results)
    assert problems == [] and [r.status for r in records] == ["ok"]  # the cell in flight left no row

    resume = shlex.split(line.split("resume with: ", 1)[1])
    assert resume[:2] == ["prefix-bench", "run"]
    done = subprocess.run([sys.executable, "-m", "bench", *resume[1:]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 already finished, 1 to run" in done.stdout
    assert_each_cell_once(results, seeds=2)
