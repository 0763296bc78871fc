"""eval_order = "length": evaluation batches of like-length examples, predictions as given."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from bench.core.config import ConfigError, TrainConfig
from bench.core.records import read_records
from bench.run import cell
from bench.run.driver import run_cells
from bench.run.matrix import expand
from bench.run.trainer import EvalResult


def test_length_order_evaluates_sorted_and_returns_predictions_in_the_given_order(monkeypatch):
    examples = ["ccc", "a", "bbbb", "dd", "eeeee", "f"]
    seen: list[list[str]] = []

    def fake_evaluate(adapter, formulation, batch, batch_size, device, desc=""):
        seen.append(list(batch))
        return EvalResult([f"pred-{e}" for e in batch], 7, 0.5)

    monkeypatch.setattr(cell, "evaluate", fake_evaluate)
    run = SimpleNamespace(cfg=TrainConfig(eval_order="length", eval_batch_size=2), adapter=None, device="cpu",
                          formulation=SimpleNamespace(token_lengths=lambda xs: [len(x) for x in xs]))
    res = cell._evaluate(run, examples, "eval")
    assert seen == [["a", "f", "dd", "ccc", "bbbb", "eeeee"]]  # shortest first: batches of like length
    assert res.predictions == [f"pred-{e}" for e in examples] and (res.tokens, res.seconds) == (7, 0.5)
    run.cfg = TrainConfig(eval_batch_size=2)  # "given": untouched
    assert cell._evaluate(run, examples, "eval").predictions == [f"pred-{e}" for e in examples]
    assert seen[-1] == examples


def test_an_unknown_eval_order_is_refused_naming_the_valid_ones():
    with pytest.raises(ConfigError, match="eval_order must be one of given, length, got 'sorted'"):
        TrainConfig(eval_order="sorted")


def test_the_same_scores_in_either_order_on_a_real_forward(tmp_path, data):
    """Tiny LLaMA, left padding, batches of 4 whose composition differs between the orders."""
    doc = {"suites": {"t": {"methods": ["prefix_tuning", "prompt_tuning", "lora"], "tasks": ["glue/sst2"],
                            "backbones": ["tiny-llama"], "prefix_lengths": [2], "seeds": [0],
                            "train": {"train_steps": 2, "batch_size": 4, "eval_limit": 24, "train_limit": 32,
                                      "max_length": 32, "eval_batch_size": 4}}}}
    given = expand(doc, "t")
    doc["suites"]["t"]["train"]["eval_order"] = "length"
    by_length = expand(doc, "t")
    assert {c.id for c in given}.isdisjoint(c.id for c in by_length)  # the option is in the id when set
    assert "eval_order" not in json.dumps(given[0].train)  # and absent at its default: old ids stand
    for cells, folder in ((given, tmp_path / "given"), (by_length, tmp_path / "length")):
        assert run_cells(cells, folder, data, torch.device("cpu"))["failed"] == 0
    scores = [{r.method: r.metrics for r in read_records(tmp_path / f)[0]} for f in ("given", "length")]
    assert scores[0] == scores[1]
