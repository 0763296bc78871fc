"""A real default-suite cell predicts the same whatever batch it is evaluated in.

The SmolLM2 residual_prefix cell of the default suite (rotary positions, left-padded
verbalizer batches, a gated prefix: the method with the largest padding error before
positions came from the mask), trained a few steps so every tensor has moved, evaluated on
its 200 dev examples at batch size 1 and 32: every prediction and every label score equal.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from bench.run.backbones import BackboneUnavailableError, load_backbone
from bench.run.data import load_split
from bench.run.formulations import choose_formulation
from bench.run.matrix import load_suite
from bench.run.trainer import train
from methods import METHODS, Anatomy, AttachContext
from tasks import TASKS


@pytest.mark.slow
def test_smollm2_cell_predictions_equal_at_batch_1_and_32(data) -> None:
    (cell,) = [c for c in load_suite(None, "default-sst2-smollm2") if c.method == "residual_prefix"]
    task = TASKS.get(cell.task)
    cfg = dataclasses.replace(cell.train_config, train_steps=4)
    form_cls = choose_formulation(cfg.formulation, task, causal=True)
    try:
        loaded = load_backbone(cell.backbone, form_cls.head, task.num_labels, cell.backbone_source)
    except BackboneUnavailableError as err:
        pytest.skip(str(err))
    formulation = form_cls(task, loaded.tokenizer, cfg.max_length)
    model = copy.deepcopy(loaded.model)
    cls = METHODS.get(cell.method)
    adapter = cls(cls.Config.from_dict(cell.method_args, cell.method), cell.prefix_length).attach(
        model, AttachContext(loaded.tokenizer, Anatomy.of(model), cell.seed))
    train_examples = load_split(cell.task, task.train_split, data).examples[:256]
    train(adapter, formulation, train_examples, cfg, cell.seed, torch.device("cpu"))

    examples = load_split(cell.task, task.eval_split, data).examples[:cfg.eval_limit]
    adapter.eval()
    adapter.fold()
    scores = {}
    with torch.no_grad():
        for size in (1, 32):
            scores[size] = torch.cat([formulation.scores(adapter, formulation.encode_eval(examples[i:i + size]))
                                      for i in range(0, len(examples), size)])
    assert len(examples) == 200
    assert torch.equal(scores[1].argmax(-1), scores[32].argmax(-1))
    assert (scores[1] - scores[32]).abs().max().item() <= 1e-3
