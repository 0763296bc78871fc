"""Generation and lm-eval tasks through the runner on random tiny models (plumbing only),
and the generation formulation's loss checked against the model's own masked LM loss."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from bench.core.records import read_records
from bench.run.backbones import load_backbone
from bench.run.driver import run_cells
from bench.run.formulations import Generation
from bench.run.matrix import expand
from tasks import TASKS


def test_generation_loss_is_the_lm_loss_on_target_tokens_only(data):
    task = TASKS.get("e2e_nlg")
    loaded = load_backbone("tiny-llama", "causal_lm")
    form = Generation(task, loaded.tokenizer, 64)
    examples = task.load("train", data).examples[:3]
    batch = form.encode(examples)
    for row, ex in zip(range(3), examples, strict=True):
        prompt = form.lead + form._ids(form.render(ex))
        n_prompt = len(prompt)
        assert (batch["labels"][row, :n_prompt] == -100).all()
        assert batch["input_ids"][row, :n_prompt].tolist() == prompt
        target = batch["labels"][row, n_prompt:]
        target = target[target != -100].tolist()
        assert target[-1] == form.eos_id and len(target) == int(batch["attention_mask"][row].sum()) - n_prompt
    model = copy.deepcopy(loaded.model)
    ours = form.train_loss(model, batch)
    # the model's own loss with the same -100 labels: an independent implementation of
    # shift-and-mask (it computes logits at every position)
    reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      labels=batch["labels"]).loss
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)


def _suite(task: str, train: dict) -> list:
    doc = {"suites": {"t": {"methods": ["prefix_tuning", "lora"], "tasks": [task], "backbones": ["tiny-llama"],
                            "prefix_lengths": [2], "seeds": [0], "train": train}}}
    return expand(doc, "t")


@pytest.mark.slow
def test_e2e_cell_records_five_metrics_samples_and_generation_speed(tmp_path, data):
    cells = _suite("e2e_nlg", {"train_steps": 2, "batch_size": 4, "eval_limit": 4, "eval_batch_size": 4,
                               "train_limit": 32, "max_length": 48})
    counts = run_cells(cells, tmp_path, data, torch.device("cpu"), log=lambda s: None)
    assert counts["failed"] == 0, read_records(tmp_path)[0][-1].error
    for r in read_records(tmp_path)[0]:
        assert r.status == "ok" and r.formulation == "generation", r.error
        assert set(r.metrics) == {"bleu", "nist", "meteor", "rouge_l", "cider"} and r.main_metric == "bleu"
        assert r.gen_tokens_per_s > 0 and "devset.csv" in r.data_notes
        lines = [json.loads(x) for x in open(r.samples_path, encoding="utf-8")]
        assert len(lines) == 4 and all(len(x["references"]) >= 1 and "output" in x for x in lines)


@pytest.mark.slow
def test_lm_eval_local_cell_records_harness_metrics_with_stderr(tmp_path, data):
    cells = _suite("lm_eval/rte_local", {"train_steps": 2, "batch_size": 4, "eval_limit": 8, "train_limit": 32,
                                         "max_length": 64})
    counts = run_cells(cells, tmp_path, data, torch.device("cpu"), log=lambda s: None)
    assert counts["failed"] == 0, read_records(tmp_path)[0][-1].error
    for r in read_records(tmp_path)[0]:
        assert r.status == "ok" and r.main_metric == "acc", r.error
        assert 0.0 <= r.metrics["acc"] <= 1.0 and r.metrics["acc_stderr"] > 0
        # 8 two-choice items: the accuracy is a multiple of 1/8
        assert round(r.metrics["acc"] * 8, 6) == int(round(r.metrics["acc"] * 8))


@pytest.mark.parametrize("method", ["prefix_tuning", "prompt_tuning", "lora"])
def test_harness_view_gives_one_logit_row_per_input_token(method):
    """lm-eval indexes logits by input position; virtual tokens must not shift them."""
    from methods import METHODS, Anatomy, AttachContext
    from tasks.lm_eval_tasks import HarnessModel

    loaded = load_backbone("tiny-llama", "causal_lm")
    model = copy.deepcopy(loaded.model)
    cls = METHODS.get(method)
    adapter = cls(cls.Config.from_dict({}, method), 3 if cls.uses_prefix_length else None).attach(
        model, AttachContext(loaded.tokenizer, Anatomy.of(model), 0, torch.device("cpu")))
    adapter.eval()
    ids = torch.randint(1000, 2000, (2, 7))
    view = HarnessModel(adapter, model)
    with torch.no_grad():
        logits = view(ids).logits
        own = adapter(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    assert logits.shape[:2] == (2, 7)
    assert torch.allclose(logits, own[:, -7:])
