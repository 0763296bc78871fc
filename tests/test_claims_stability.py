"""The claims-stability suite compares residual_prefix with prefix_tuning so that only the
residual block and the gates differ: same position shift, reparameterisation MLP, learning
rate and every other training option; and under exactly those settings residual_prefix
with its gates fully open and its residual branch closed (its starting state, apart from the
gates) is prefix_tuning."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.run.backbones import load_backbone
from bench.run.matrix import load_suite
from methods import METHODS, Anatomy, AttachContext

IDS = torch.tensor([[0, 0, 2023, 3185, 2001, 2204], [2023, 2003, 1037, 2307, 2143, 1012]])
LEFT = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def suite_pairs():
    cells = load_suite(None, "claims-stability")
    by_point = {}
    for c in cells:
        by_point.setdefault((c.task, c.backbone, c.prefix_length, c.seed), {})[c.method] = c
    return [(p["prefix_tuning"], p["residual_prefix"]) for p in by_point.values()]


def test_suite_pairs_every_point_and_shares_every_setting() -> None:
    pairs = suite_pairs()
    assert len(pairs) == 9 and sorted({pt.prefix_length for pt, _ in pairs}) == [5, 20, 50]
    for pt, rp in pairs:
        assert pt.train == rp.train  # lr and every training option
        shared = set(pt.method_args) & set(rp.method_args)
        assert {"shift_positions", "projection", "mid_dim", "init", "init_std"} <= shared
        assert {k: pt.method_args[k] for k in shared} == {k: rp.method_args[k] for k in shared}
        # what remains is the residual block and the gates
        assert set(rp.method_args) - shared == {"bottleneck", "activation", "residual_gain_init", "gate_init"}
    assert pairs[0][0].method_args["shift_positions"] is True  # prefix tuning's own setting


def attach(cell, backbone: str, head: str, seed: int):
    loaded = load_backbone(backbone, head)
    model = copy.deepcopy(loaded.model)
    cls = METHODS.get(cell.method)
    method = cls(cls.Config.from_dict(cell.method_args, cell.method), 3)
    return method.attach(model, AttachContext(loaded.tokenizer, Anatomy.of(model), seed)).eval()


@pytest.mark.parametrize("backbone,head", [("tiny-llama", "causal_lm"), ("tiny-bert", "seq_cls")])
def test_open_gates_and_closed_residual_is_prefix_tuning_under_the_suite_settings(backbone: str, head: str) -> None:
    pt_cell, rp_cell = suite_pairs()[0]
    plain = attach(pt_cell, backbone, head, seed=0)
    gated = attach(rp_cell, backbone, head, seed=1)
    mask = LEFT if head == "causal_lm" else LEFT.flip(1)
    x = {"input_ids": IDS if head == "causal_lm" else torch.where(mask.bool(), IDS.flip(1), 0),
         "attention_mask": mask}
    with torch.no_grad():
        # the same prefix (embedding + MLP); the residual branch as attached: LayerNorm gain 0
        gated.embedding.copy_(plain.embedding)
        gated.mlp.load_state_dict(plain.mlp.state_dict())
        assert torch.equal(gated.flat_prefix(), plain.flat_prefix())
        gated.gate_logit.fill_(float("inf"))  # every gate fully open
        torch.testing.assert_close(gated(**x).logits, plain(**x).logits, rtol=0, atol=1e-6)
        gated.gate_logit.fill_(0.0)  # the gates are what is left to differ
        assert (gated(**x, output_hidden_states=True).hidden_states[-1]
                - plain(**x, output_hidden_states=True).hidden_states[-1]).abs().max() > 1e-4
