"""Prefix-Tuning+ as published (a free, zero-initialised M per layer, no prefix-length axis)
and our low-rank variant (M = A^T B, rank = the prefix length): shapes and counts, the
frozen backbone at M = 0, training moving the outputs, the two forms agreeing when they hold
the same M, the feature map, and how the matrix expands them."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.run.backbones import load_backbone
from methods import METHODS, Anatomy, AttachContext
from methods.base import with_positions
from methods.prefix_tuning_plus import feature_map

IDS = torch.tensor([[0, 0, 2023, 3185, 2001, 2204], [2023, 2003, 1037, 2307, 2143, 1012]])
LEFT = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
BACKBONES = [("tiny-llama", "causal_lm"), ("tiny-gpt2", "causal_lm"), ("tiny-bert", "seq_cls")]


def attach(name: str, backbone: str, head: str, prefix_length: int | None = None, **config):
    loaded = load_backbone(backbone, head)
    model = copy.deepcopy(loaded.model)
    cls = METHODS.get(name)
    method = cls(cls.Config(**config), prefix_length)
    return method, method.attach(model, AttachContext(loaded.tokenizer, Anatomy.of(model), 0)).eval(), loaded


def batch(head: str) -> dict[str, torch.Tensor]:
    if head == "causal_lm":
        return {"input_ids": IDS, "attention_mask": LEFT}
    mask = LEFT.flip(1)
    return {"input_ids": torch.where(mask.bool(), IDS.flip(1), 0), "attention_mask": mask}


def test_published_form_has_no_prefix_axis_and_the_low_rank_form_has_one() -> None:
    plus, low = METHODS.get("prefix_tuning_plus"), METHODS.get("prefix_tuning_plus_lowrank")
    assert plus.uses_prefix_length is False and low.uses_prefix_length is True
    assert plus.identity_at_init and low.identity_at_init
    assert issubclass(low, plus)  # a variant subclasses, it does not copy
    assert "init_std" not in plus.Config().to_dict()  # M starts at zero: nothing to draw


@pytest.mark.parametrize("per_head", [False, True])
def test_free_memory_shape_and_count(per_head: bool) -> None:
    # tiny-llama: L = 2 layers, H = 4 query heads of d_h = 8 (d_q = 32), 2 KV heads
    method, ad, _ = attach("prefix_tuning_plus", "tiny-llama", "causal_lm", per_head=per_head)
    L, H, d_h = 2, 4, 8
    G, d_phi = (H, d_h) if per_head else (1, H * d_h)
    assert ad.memory.shape == (L, G, d_phi, d_phi)  # d_phi = d_v: phi acts elementwise on q
    expected = L * H * d_h ** 2 if per_head else L * (H * d_h) ** 2
    assert method.trainable_count(ad, Anatomy.of(ad.model)) == expected
    assert sum(p.numel() for p in ad.parameters() if p.requires_grad) == expected
    assert torch.count_nonzero(ad.memory) == 0


def test_low_rank_count_uses_the_prefix_length() -> None:
    method, ad, _ = attach("prefix_tuning_plus_lowrank", "tiny-llama", "causal_lm", prefix_length=5)
    assert ad.keys.shape == ad.values.shape == (2, 1, 5, 32)
    assert method.trainable_count(ad, Anatomy.of(ad.model)) == 2 * 5 * 2 * 32
    assert torch.count_nonzero(ad.values) == 0


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("backbone,head", BACKBONES)
def test_zero_memory_is_the_frozen_backbone_bit_for_bit(backbone: str, head: str, per_head: bool) -> None:
    _, ad, loaded = attach("prefix_tuning_plus", backbone, head, per_head=per_head)
    x = batch(head)
    with torch.no_grad():
        base = loaded.model(**with_positions(loaded.model, x)).logits
        ours = ad(**x).logits
    keep = x["attention_mask"].bool() if head == "causal_lm" else slice(None)
    assert torch.equal(ours[keep], base[keep])


@pytest.mark.parametrize("backbone,head", BACKBONES)
def test_training_the_memory_moves_the_outputs(backbone: str, head: str) -> None:
    _, ad, _ = attach("prefix_tuning_plus", backbone, head)
    x = batch(head)
    with torch.no_grad():
        before = ad(**x).logits
    opt = torch.optim.AdamW([ad.memory], lr=1e-2)
    ad.train()
    for _ in range(2):
        loss = ad(**x).logits.float().square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ad.eval()
    assert torch.count_nonzero(ad.memory) > 0
    with torch.no_grad():
        after = ad(**x).logits
    assert (after - before).abs().max() > 1e-4


def test_low_rank_memory_equals_the_free_form_holding_a_transposed_b() -> None:
    """The low-rank variant is the free form restricted to M = A^T B (same phi, same place)."""
    _, low, _ = attach("prefix_tuning_plus_lowrank", "tiny-llama", "causal_lm", prefix_length=3)
    _, full, loaded = attach("prefix_tuning_plus", "tiny-llama", "causal_lm")
    x = batch("causal_lm")
    with torch.no_grad():
        low.values.normal_(0, 0.5)
        full.memory.copy_(torch.stack([low.memory_matrix(i) for i in range(2)]))
        a, b = low(**x).logits, full(**x).logits
        base = loaded.model(**with_positions(loaded.model, x)).logits  # unhooked
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert (a - base).abs().max() > 1e-3


def test_per_head_memory_is_the_block_diagonal_free_memory() -> None:
    _, per_head, _ = attach("prefix_tuning_plus", "tiny-llama", "causal_lm", per_head=True)
    _, whole, _ = attach("prefix_tuning_plus", "tiny-llama", "causal_lm")
    x = batch("causal_lm")
    with torch.no_grad():
        per_head.memory.normal_(0, 0.3)
        whole.memory.copy_(torch.stack([torch.block_diag(*per_head.memory[i]).unsqueeze(0) for i in range(2)]))
        torch.testing.assert_close(whole(**x).logits, per_head(**x).logits, rtol=1e-5, atol=1e-5)


def test_feature_maps() -> None:
    x = torch.linspace(-15, 15, 301)
    phi = feature_map("elu", x)
    torch.testing.assert_close(phi, torch.nn.functional.elu(x) + 1, rtol=0, atol=0)
    assert (phi > 0).all()  # a positive kernel feature map, as linear attention needs
    # far below zero float32 rounds elu(x) + 1 to 0, never below
    assert (feature_map("elu", torch.tensor([-1e4, -100.0, float("-inf")])) >= 0).all()
    torch.testing.assert_close(phi[x > 0], x[x > 0] + 1, rtol=0, atol=1e-6)
    torch.testing.assert_close(feature_map("gelu", x), torch.nn.functional.gelu(x), rtol=0, atol=0)


def test_matrix_gives_the_published_form_one_cell_and_the_low_rank_form_one_per_length(tmp_path) -> None:
    from bench.run.matrix import load_suite

    path = tmp_path / "s.toml"
    path.write_text('[suites.x]\nmethods = ["prefix_tuning_plus", "prefix_tuning_plus_lowrank"]\n'
                    'tasks = ["glue/sst2"]\nbackbones = ["tiny-llama"]\nprefix_lengths = [5, 20]\nseeds = [0]\n')
    cells = load_suite(path, "x")
    got = sorted((c.method, c.prefix_length or 0) for c in cells)
    assert got == [("prefix_tuning_plus", 0), ("prefix_tuning_plus_lowrank", 5), ("prefix_tuning_plus_lowrank", 20)]
