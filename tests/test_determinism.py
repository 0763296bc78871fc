"""Determinism on CPU: the same cell and seed give the same metrics, losses and trained
weights to the last bit; another seed gives other weights (so the check can fail)."""

from __future__ import annotations

import json

import pytest
import torch

from bench.run.cell import run_cell
from bench.run.matrix import expand

TRAIN = {"train_steps": 4, "batch_size": 4, "eval_limit": 24, "train_limit": 64, "max_length": 32}


def _cells(method: str, seeds: list[int]):
    return expand({"suites": {"d": {"methods": [method], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
                                    "prefix_lengths": [3], "seeds": seeds, "train": TRAIN}}}, "d")


def _run(cell, data, out):
    from safetensors.torch import load_file

    record = run_cell(cell, data, torch.device("cpu"), out)
    curves = json.loads(open(record.curve_path).read())
    return record, curves["loss"], load_file(record.adapter_path)


@pytest.mark.parametrize("method", ["prefix_tuning", "lora"])
def test_same_cell_same_seed_same_numbers(method, data, tmp_path):
    cell, other = _cells(method, [0, 1])
    a, loss_a, weights_a = _run(cell, data, tmp_path / "a")
    b, loss_b, weights_b = _run(cell, data, tmp_path / "b")
    assert a.metrics == b.metrics and a.main_score == b.main_score
    assert loss_a == loss_b and len(loss_a) == TRAIN["train_steps"]  # every step, bit for bit
    assert (a.first_loss, a.final_loss) == (b.first_loss, b.final_loss)
    assert weights_a.keys() == weights_b.keys() and weights_a
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name

    c, loss_c, weights_c = _run(other, data, tmp_path / "c")
    assert loss_c != loss_a or any(not torch.equal(weights_a[n], weights_c[n]) for n in weights_a)
