"""Properties specific to the prefix variants: the gated residual prefix's two limits
(all gates closed = the frozen backbone, all open = plain prefix tuning with the residual
prefix), Prefix-Tuning+'s architecture table, and config validation."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.core.config import ConfigError
from bench.run.backbones import load_backbone
from methods import METHODS, Anatomy, AttachContext
from methods.base import with_positions

P = 3
BACKBONES = [("tiny-llama", "causal_lm"), ("tiny-gpt2", "causal_lm"), ("tiny-bert", "seq_cls")]
IDS = torch.tensor([[0, 0, 2023, 3185, 2001, 2204], [2023, 2003, 1037, 2307, 2143, 1012]])
LEFT = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def attach(name: str, backbone: str, head: str, **config):
    loaded = load_backbone(backbone, head)
    model = copy.deepcopy(loaded.model)
    cls = METHODS.get(name)
    return cls(cls.Config(**config), P).attach(model, AttachContext(loaded.tokenizer, Anatomy.of(model), 0)).eval()


def batch(head: str):
    if head == "causal_lm":
        return {"input_ids": IDS, "attention_mask": LEFT}
    mask = LEFT.flip(1)
    return {"input_ids": torch.where(mask.bool(), IDS.flip(1), 0), "attention_mask": mask}


@pytest.mark.parametrize("backbone,head", BACKBONES)
def test_gates_closed_is_the_frozen_backbone_and_open_is_plain_prefix(backbone: str, head: str) -> None:
    gated = attach("residual_prefix", backbone, head, init="random", init_std=0.5)
    x = batch(head)
    rows = x["attention_mask"].bool() if head == "causal_lm" else slice(None)
    with torch.no_grad():
        base_model = load_backbone(backbone, head).model
        base = base_model(**with_positions(base_model, x)).logits
        gated.gate_logit.fill_(-float("inf"))
        closed = gated(**x).logits
        gated.gate_logit.fill_(float("inf"))
        opened = gated(**x).logits
        plain = attach("prefix_tuning", backbone, head, projection=False, shift_positions=False)
        plain.prefix.copy_(gated.flat_prefix())
        reference = plain(**x).logits
    # SDPA with a float mask vs the base model's boolean one: equal up to float rounding
    torch.testing.assert_close(closed[rows], base[rows], rtol=0, atol=1e-6)
    torch.testing.assert_close(opened, reference, rtol=0, atol=1e-6)
    # the prefix does matter (hidden states: tiny BERT's random classifier shrinks logit gaps)
    with torch.no_grad():
        h_base = base_model(**with_positions(base_model, x), output_hidden_states=True).hidden_states[-1]
        h_plain = plain(**x, output_hidden_states=True).hidden_states[-1]
    assert (h_plain[rows] - h_base[rows]).abs().max() > 1e-2


def test_gates_train_and_are_logged() -> None:
    gated = attach("residual_prefix", "tiny-llama", "causal_lm", gate_init=0.5)
    log = gated.step_log()
    assert log["gate"] == [0.5] * P
    gated.train()
    loss = gated(**batch("causal_lm")).logits.square().mean()
    loss.backward()
    assert gated.gate_logit.grad.abs().min() > 0
    gain = gated.residual[3].weight
    assert torch.equal(gain, torch.zeros_like(gain))  # residual branch starts closed...
    assert gain.grad.abs().sum() > 0  # ...and opens under training


def test_half_open_gate_scales_the_prefix_weight() -> None:
    """log-gate bias: a gate g multiplies that prefix key's unnormalised attention weight."""
    gated = attach("residual_prefix", "tiny-llama", "causal_lm", init="random", init_std=0.5)
    x = batch("causal_lm")
    with torch.no_grad():
        gated.gate_logit.fill_(0.0)  # g = 1/2 for every prefix token
        half = gated(**x).logits
        gated.gate_logit.fill_(float("inf"))
        full = gated(**x).logits
    assert (half - full).abs().max() > 1e-4


def test_prefix_tuning_plus_rejects_unknown_architectures() -> None:
    from transformers import OPTConfig, OPTForCausalLM

    model = OPTForCausalLM(OPTConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                     num_attention_heads=2, word_embed_proj_dim=16))
    cls = METHODS.get("prefix_tuning_plus")
    with pytest.raises(ConfigError, match="'opt'.*supported: bert, .*gpt2, .*llama"):
        cls(cls.Config(), None).attach(model, AttachContext(None, Anatomy.of(model), 0))


def test_p_tuning_v2_defaults_to_direct_prefixes() -> None:
    cls = METHODS.get("p_tuning_v2")
    assert cls.Config().projection is False
    assert issubclass(cls, METHODS.get("prefix_tuning"))
    assert cls.default_lr != METHODS.get("prefix_tuning").default_lr


@pytest.mark.parametrize("name,values,match", [
    ("residual_prefix", {"gate_init": 1.0}, "gate_init"),
    ("residual_prefix", {"activation": "swish"}, "relu, gelu, tanh"),
    ("residual_prefix", {"bottleneck": 0}, "bottleneck"),
    ("prefix_tuning_plus", {"feature_map": "relu"}, "elu, gelu"),
    ("prefix_tuning_plus_lowrank", {"feature_map": "relu"}, "elu, gelu"),
    ("prefix_tuning_plus_lowrank", {"init_std": float("nan")}, "init_std"),
    ("prefix_tuning_plus", {"init_std": 0.1}, "init_std"),  # the free M has no random init
    ("p_tuning_v2", {"init": "zeros"}, "vocab, text, random"),
])
def test_bad_config_names_the_value(name: str, values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        METHODS.get(name).Config.from_dict(values, name)
