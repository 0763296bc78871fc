"""An empty training or evaluation split (a header and no rows) fails up front with exit 2
naming the file, in ``run`` and ``run --dry-run``, instead of the sampler looping forever."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run.trainer import batches_for_training

from ._helpers import TINY_SUITE

REPO = Path(__file__).resolve().parents[2]
# Generous for a loaded 2-core machine (importing torch takes seconds); the bug this guards
# against never ends, so any limit tells the two apart.
TIMEOUT_S = 120


def _data_with_header_only(tmp_path: Path, data_dir: Path, task: str) -> tuple[Path, Path]:
    """A data folder in the shared layout whose training file has its header and no rows;
    returns (data folder, emptied file)."""
    root = tmp_path / "data"
    if task == "glue/sst2":
        folder, train, other = root / "glue" / "sst2", "train.tsv", "dev.tsv"
        header = (data_dir / "glue" / "sst2" / "train.tsv").open(encoding="utf-8").readline()
    else:  # offline E2E trains on devset.csv (tasks/e2e.py)
        folder, train, other = root / "e2e", "devset.csv", "testset_w_refs.csv"
        header = "mr,ref\n"
    folder.mkdir(parents=True)
    shutil.copy(data_dir / folder.relative_to(root) / other, folder / other)
    (folder / train).write_text(header, encoding="utf-8")
    return root, folder / train


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PREFIX_BENCH_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "bench", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("task, dry", [("glue/sst2", False), ("glue/sst2", True), ("e2e_nlg", False)])
def test_header_only_training_file_exits_2_naming_it(tmp_path, data_dir, task, dry):
    data, emptied = _data_with_header_only(tmp_path, data_dir, task)
    suite = tmp_path / "suite.toml"
    suite.write_text(TINY_SUITE.format(task=task))
    argv = ["run", "--config", str(suite), "--suite", "s", "--data-dir", str(data), "--results",
            str(tmp_path / "runs"), "--no-render"] + (["--dry-run"] if dry else [])
    done = _cli(*argv, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert str(emptied) in done.stderr and "has no examples" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "records.jsonl").exists()


def test_empty_evaluation_split_is_refused_too(tmp_path, data_dir, no_model, capsys):
    from bench.cli import main
    from bench.run.data import _SPLITS

    data, _ = _data_with_header_only(tmp_path, data_dir, "glue/sst2")
    shutil.copy(data_dir / "glue" / "sst2" / "dev.tsv", data / "glue" / "sst2" / "train.tsv")
    (data / "glue" / "sst2" / "dev.tsv").write_text("sentence\tlabel\n", encoding="utf-8")
    suite = tmp_path / "suite.toml"
    suite.write_text(TINY_SUITE.format(task="glue/sst2"))
    _SPLITS.clear()  # splits are cached per process
    assert main(["run", "--config", str(suite), "--suite", "s", "--data-dir", str(data), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "split 'validation' has no examples" in err and "dev.tsv" in err


def test_the_sampler_refuses_an_empty_split_instead_of_looping():
    def hung(signum, frame):
        raise AssertionError("batches_for_training looped on an empty split")

    previous = signal.signal(signal.SIGALRM, hung)  # a regression fails here instead of hanging CI
    signal.setitimer(signal.ITIMER_REAL, 10)
    try:
        with pytest.raises(ValueError, match="from 0 examples"):
            batches_for_training(0, 4, 3, seed=0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # a split smaller than a batch is cycled: every batch is full
    plan = batches_for_training(3, 4, 5, seed=0)
    assert len(plan) == 5 and all(len(b) == 4 and set(b) <= {0, 1, 2} for b in plan)
