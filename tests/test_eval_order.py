"""eval_order = "length": evaluation batches of like-length examples, predictions as given."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from bench.core.config import ConfigError, TrainConfig
from bench.core.records import read_records
from bench.run import cell
from bench.run.driver import pinned_cells, run_cells
from bench.run.matrix import expand
from bench.run.trainer import EvalResult
from tasks.base import Example


def _fake_run(monkeypatch, **cfg) -> tuple[SimpleNamespace, list[list[str]]]:
    """A run whose ``evaluate`` predicts "pred-<text>" and records the texts of each call."""
    seen: list[list[str]] = []

    def fake_evaluate(adapter, formulation, batch, batch_size, device, desc=""):
        seen.append([e.text_a for e in batch])
        return EvalResult([f"pred-{e.text_a}" for e in batch], 7, 0.5)

    monkeypatch.setattr(cell, "evaluate", fake_evaluate)
    return SimpleNamespace(cfg=TrainConfig(**cfg), adapter=None, device="cpu",
                           formulation=SimpleNamespace(token_lengths=lambda xs: [len(x.text_a) for x in xs])), seen


def test_length_order_evaluates_sorted_and_returns_predictions_in_the_given_order(monkeypatch):
    texts = ["ccc", "a", "bbbb", "dd", "eeeee", "f"]
    examples = [Example(t) for t in texts]
    run, seen = _fake_run(monkeypatch, eval_order="length", eval_batch_size=2)
    res = cell._evaluate(run, examples, "eval")
    assert seen == [["a", "f", "dd", "ccc", "bbbb", "eeeee"]]  # shortest first: batches of like length
    assert res.predictions == [f"pred-{t}" for t in texts] and (res.tokens, res.seconds) == (7, 0.5)
    run.cfg = TrainConfig(eval_batch_size=2)  # "given": untouched
    assert cell._evaluate(run, examples, "eval").predictions == [f"pred-{t}" for t in texts]
    assert seen[-1] == texts


@pytest.mark.parametrize("order", ["given", "length"])
def test_an_input_that_occurs_again_is_predicted_once_and_its_prediction_repeated(monkeypatch, order):
    """E2E's held-out slice: a row per reference of each MR, every row the same input."""
    rows = [Example("mr b", label="b1"), Example("mr a", label="a1"), Example("mr b", label="b2"),
            Example("mr a", "other half", label="a3"), Example("mr a", label="a2"), Example("mr c", label="c1")]
    run, seen = _fake_run(monkeypatch, eval_order=order, eval_batch_size=2)
    res = cell._evaluate(run, rows, "holdout")
    (decoded,) = seen
    assert sorted(decoded) == ["mr a", "mr a", "mr b", "mr c"]  # text_b is part of the input
    assert res.predictions == ["pred-mr b", "pred-mr a", "pred-mr b", "pred-mr a", "pred-mr a", "pred-mr c"]


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


def test_decoding_each_distinct_input_once_gives_what_decoding_every_row_gives(data):
    """A real E2E held-out slice (whole MRs of the devset, a row per reference), beam 5 on tiny
    LLaMA with a random prefix: the repeated predictions equal those of every row decoded."""
    doc = {"suites": {"t": {"methods": ["prefix_tuning"], "tasks": ["e2e_nlg"], "backbones": ["tiny-llama"],
                            "prefix_lengths": [2], "seeds": [0],
                            "train": {"train_steps": 1, "batch_size": 4, "holdout": 0.01, "eval_batch_size": 8,
                                      "max_length": 48, "eval_order": "length"}}}}
    run = cell.prepare(pinned_cells(expand(doc, "t"))[0], data, torch.device("cpu"))
    cell.attach(run)  # a copy of the backbone: perturbing it leaves the process's cached one alone
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the random tiny model says the same for every MR until its weights spread
        for p in run.adapter.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5 * (p.float().std().nan_to_num() + 0.1))
    rows = run.holdout_examples[:20]  # in file order: a few MRs, each several rows
    distinct = len({e.text_a for e in rows})
    assert 1 < distinct < len(rows)  # whole MRs, several rows each
    once = cell._evaluate(run, rows, "holdout")
    every = cell._evaluate_in_order(run, rows, "holdout")
    assert once.predictions == every.predictions
    assert len(set(once.predictions)) > 1  # the inputs make a difference: the check can fail
