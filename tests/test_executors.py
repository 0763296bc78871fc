"""Executors: every one runs real cells of a tiny model into the same store, and gives the
numbers the in-process run gives (same cell, same seed, one thread)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from bench.core.config import ConfigError
from bench.core.records import read_records
from bench.run.driver import run_cells
from bench.run.executors import EXECUTORS, LocalExecutor, make_executor, parse_options
from bench.run.matrix import expand

TRAIN = {"train_steps": 3, "batch_size": 4, "eval_limit": 16, "train_limit": 64, "max_length": 32}


def tiny_cells(methods=("prompt_tuning", "lora"), seeds=(0,), method_args=None):
    suite = {"methods": list(methods), "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
             "prefix_lengths": [2], "seeds": list(seeds), "train": dict(TRAIN)}
    if method_args:
        suite["method_args"] = method_args
    return expand({"suites": {"t": suite}}, "t")


def scores(results_dir):
    records, problems = read_records(results_dir)
    assert problems == []
    return {r.cell_id: (r.status, r.metrics, r.first_loss, r.final_loss) for r in records}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """The in-process run every executor must reproduce exactly."""
    from tasks import DataSettings

    out = tmp_path_factory.mktemp("local")
    counts = run_cells(tiny_cells(), out, DataSettings(data_dir, allow_hub=False), "cpu",
                       log=lambda s: None, threads=1)
    assert counts["ran"] == 2 and counts["failed"] == 0
    return scores(out)


def test_registry_and_options():
    assert {"local", "subprocess", "ray", "slurm"} <= set(EXECUTORS.names())
    with pytest.raises(ConfigError, match=r"unknown executor 'rayy'.*did you mean 'ray'.*local"):
        make_executor("rayy")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'gpu'.*valid keys: address"):
        make_executor("ray", {"gpu": 1})
    with pytest.raises(ConfigError, match="workers > 1 needs isolate"):
        make_executor("local", {"workers": 2})
    with pytest.raises(ConfigError, match="cluster 'pbs' is not one of"):
        make_executor("slurm", {"cluster": "pbs"})
    assert parse_options(["workers=2", "address=ray://h:10001", "isolate=true"]) == {
        "workers": 2, "address": "ray://h:10001", "isolate": True}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_options(["workers"])


@pytest.fixture
def faulty():
    """The test-only failing method, registered for one test and removed afterwards."""
    from bench.core.registry import import_plugins
    from methods import METHODS

    import_plugins(["faulty_plugin"])
    yield "test_faulty"
    METHODS._items.pop("test_faulty", None)
    sys.modules.pop("faulty_plugin", None)


def test_subprocess_matches_in_process_and_survives_a_killed_worker(reference, faulty, data, tmp_path):
    """A child per cell gives the in-process numbers; a worker SIGKILLed mid-cell (what the OOM
    killer does) becomes a failed row and the other cells run."""
    cells = tiny_cells(methods=("prompt_tuning", "lora", faulty), method_args={faulty: {"mode": "kill"}})
    executor = make_executor("subprocess", {"workers": 2})
    counts = run_cells(cells, tmp_path, data, "cpu", log=lambda s: None, executor=executor, threads=1,
                       plugins=("faulty_plugin",))  # the children import the plugin too
    assert counts == {"cells": 3, "skipped": 0, "ran": 3, "failed": 1}
    got = scores(tmp_path)
    assert {k: v for k, v in got.items() if k in reference} == reference
    records, _ = read_records(tmp_path)
    assert len(records) == 3  # exactly one row per cell
    killed = next(r for r in records if r.method == faulty)
    assert killed.status == "failed" and "killed by signal 9" in killed.error
    ok = [r for r in records if r.status == "ok"]
    # a child per cell: the peak RSS is the cell's own, and says so
    assert {r.peak_memory_kind for r in ok} == {"cpu_peak_rss_cell"}
    assert all(r.peak_memory_bytes > 50 << 20 for r in ok)


needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray not installed (pip install 'prefix-bench[distributed]')")
needs_submitit = pytest.mark.skipif(importlib.util.find_spec("submitit") is None,
                                    reason="submitit not installed (pip install 'prefix-bench[distributed]')")


@pytest.mark.slow  # starting Ray and a fresh worker per cell: ~30-50 s on 2 busy cores
@needs_ray
def test_ray_local_cluster(reference, data, tmp_path):
    import ray

    executor = make_executor("ray", {"num_cpus": 2, "cpus_per_cell": 1})
    counts = run_cells(tiny_cells(), tmp_path, data, "cpu", log=lambda s: None, executor=executor)
    assert not ray.is_initialized()  # the instance we started is shut down again
    assert counts == {"cells": 2, "skipped": 0, "ran": 2, "failed": 0}
    assert scores(tmp_path) == reference
    assert {r.peak_memory_kind for r in read_records(tmp_path)[0]} == {"cpu_peak_rss_cell"}
    # a second run finds everything finished and starts nothing
    again = run_cells(tiny_cells(), tmp_path, data, "cpu", log=lambda s: None, executor=executor)
    assert again["ran"] == 0 and again["skipped"] == 2


@pytest.mark.slow  # one fresh Python per array task: ~30-45 s on 2 busy cores
@needs_submitit
def test_slurm_array_with_submitit_local(reference, data, tmp_path):
    executor = make_executor("slurm", {"cluster": "local", "cpus_per_cell": 1, "timeout_min": 5})
    log: list[str] = []
    counts = run_cells(tiny_cells(), tmp_path / "run", data, "cpu", log=log.append, executor=executor)
    assert counts == {"cells": 2, "skipped": 0, "ran": 2, "failed": 0}, log
    assert scores(tmp_path / "run") == reference
    assert any("submitted 2 local jobs" in line for line in log)
    assert (tmp_path / "run" / "slurm").is_dir()  # submitit's logs beside the records


def test_local_executor_default(data, tmp_path):
    assert LocalExecutor().config.isolate is False
    assert make_executor("subprocess").config.isolate is True
