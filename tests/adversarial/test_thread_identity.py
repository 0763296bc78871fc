"""Torch CPU threads and deterministic algorithms change a result's bytes (measured on 2 cores:
the tiny cell's adapter bytes differ at 1 and 2 threads), so both are part of a cell's id and are
recorded as the worker ran; a worker in another process applies what the cell says."""

from __future__ import annotations

import pytest
import torch

from bench.core.records import read_records
from bench.run.driver import run_cells
from bench.run.executors import make_executor
from bench.run.matrix import expand
from bench.run.precision import resolve

TRAIN = {"train_steps": 3, "batch_size": 4, "eval_limit": 16, "train_limit": 64, "max_length": 32}


@pytest.fixture
def cells():
    return expand({"suites": {"t": {"methods": ["prompt_tuning"], "tasks": ["glue/sst2"],
                                    "backbones": ["tiny-llama"], "prefix_lengths": [2], "seeds": [0],
                                    "train": dict(TRAIN)}}}, "t")


@pytest.fixture
def torch_settings():
    """This test process's torch settings, put back afterwards (cells change them)."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_the_id_hashes_threads_and_deterministic(cells):
    (cell,) = cells
    ids = {cell.id, cell.pinned(1, False, "random-init").id, cell.pinned(2, False, "random-init").id, cell.pinned(1, True).id}
    assert len(ids) == 4
    assert cell.threads == 0 and cell.pinned(0, False).threads == 0  # unpinned is threads = 0
    # pinning also resolves precision "auto" for this machine; nothing else changes
    assert cell.pinned(0, False).train == {**cell.train, "precision": resolve("auto", "cpu")}
    assert cell.pinned(2, False).resolved()["threads"] == 2  # stored with the row, so reproducible


def test_another_thread_count_is_another_cell_with_its_own_row(cells, data, tmp_path, torch_settings):
    for threads in (1, 2):
        counts = run_cells(cells, tmp_path, data, "cpu", log=lambda s: None, threads=threads)
        assert counts["ran"] == 1  # not "already finished": 2 threads is not the 1-thread result
    rows = read_records(tmp_path)[0]
    (cell,) = cells
    assert [(r.cell_id, r.kernels["threads"], r.kernels["deterministic_algorithms"], r.config["threads"])
            for r in rows] == [(cell.pinned(1, False, "random-init").id, "1", "false", 1), (cell.pinned(2, False, "random-init").id, "2", "false", 2)]
    again = run_cells(cells, tmp_path, data, "cpu", log=lambda s: None, threads=2)
    assert again["ran"] == 0 and again["skipped"] == 1


def test_a_child_worker_runs_with_the_drivers_deterministic_setting(cells, data, tmp_path, torch_settings):
    """The driver's setting (say a --plugin turned it on) is pinned into the cell; a fresh
    child process starts without it and must apply it, and records what it ran with."""
    torch.use_deterministic_algorithms(True)
    counts = run_cells(cells, tmp_path, data, "cpu", log=lambda s: None, threads=1,
                       executor=make_executor("subprocess"))
    assert counts == {"cells": 1, "skipped": 0, "ran": 1, "failed": 0}
    (row,) = read_records(tmp_path)[0]
    assert row.status == "ok", row.error
    assert (row.cell_id, row.kernels["threads"], row.kernels["deterministic_algorithms"]) == (
        cells[0].pinned(1, True, "random-init").id, "1", "true")
