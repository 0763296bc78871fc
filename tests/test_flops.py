"""The analytic FLOP count against torch's FlopCounterMode (an independent reference), the
peak probe, and the efficiency fields of a real `tiny` suite record.

The FLOP check runs over every registered method (a new method is covered by registering
it) with its default options, plus options that change what is computed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.measure.efficiency import steps_to_target
from bench.measure.flops import StepFlops, peak_flops
from bench.run import backbones
from methods import METHODS, Anatomy, AttachContext

B, S = 3, 7
BACKBONES = ["tiny-llama", "tiny-gpt2"]
# options that change what a method computes, beyond its defaults
VARIANTS = [("prefix_tuning", {"projection": True, "mid_dim": 16}), ("prefix_tuning", {"projection": False}),
            ("residual_prefix", {"projection": True, "mid_dim": 16}),
            ("prefix_tuning_plus", {"per_head": True}), ("prefix_tuning_plus_lowrank", {"per_head": True})]
LORA_WIDE = {"tiny-llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
             "tiny-gpt2": ["c_attn", "c_proj", "c_fc"]}
CASES = [(m, {}) for m in METHODS.names()] + VARIANTS


def _attached(backbone: str, method: str, args: dict, P: int = 4):
    loaded = backbones.load_backbone(backbone, "causal_lm", 2, "auto", "cpu")
    model = copy.deepcopy(loaded.model)
    model.config._attn_implementation = "eager"  # matmuls FlopCounterMode can see (CPU SDPA it cannot)
    cls = METHODS.get(method)
    m = cls(cls.Config.from_dict(args, method), P if cls.uses_prefix_length else None)
    return m.attach(model, AttachContext(loaded.tokenizer, Anatomy.of(model), 0))


def _measured(adapter, train: bool, logits_to_keep: int = 1) -> int:
    ids = torch.randint(5, 1000, (B, S), generator=torch.Generator().manual_seed(0))
    # SDPA's math kernel is made of matmuls FlopCounterMode sees; CPU's fused kernel is not
    # (residual_prefix sets its own SDPA-based attention over the eager one set above)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        with torch.set_grad_enabled(train):
            out = adapter(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=logits_to_keep)
            if train:
                F.cross_entropy(out.logits[:, -1, :], torch.zeros(B, dtype=torch.long)).backward()
    return counter.get_total_flops()


def _check_exact(adapter) -> None:
    """Training step, unfolded and folded evaluation: the analytic count equals torch's,
    exactly (both count the same matrix products; nothing is estimated)."""
    flops = StepFlops.of(adapter)
    assert flops.count(B, S, train=True) == _measured(adapter, train=True)
    adapter.eval()
    assert flops.count(B, S, train=False) == _measured(adapter, train=False)
    adapter.fold()
    assert flops.count(B, S, train=False, folded=True) == _measured(adapter, train=False)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method,args", CASES)
def test_flop_count_matches_flop_counter_mode(backbone, method, args):
    _check_exact(_attached(backbone, method, args))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_flop_count_lora_on_every_matrix(backbone):
    """LoRA's A and B beside attention and MLP matrices alike (its declared extra FLOPs)."""
    _check_exact(_attached(backbone, "lora", {"target_modules": LORA_WIDE[backbone]}))


@pytest.mark.xfail(strict=True, reason="outside bench/measure/flops.py's stated assumption: nothing trains in layer 0 "
                   "before its output projection, whose input then needs no gradient; the count charges one")
def test_flop_count_lora_on_output_projection_only():
    _check_exact(_attached("tiny-llama", "lora", {"target_modules": ["o_proj"]}))


def test_flop_count_full_logits_and_hand_count():
    """All positions' logits (full LM loss) on tiny-llama, and a hand count of the forward."""
    adapter = _attached("tiny-llama", "prefix_tuning", {"projection": False})
    flops = StepFlops.of(adapter)
    assert flops.count(B, S, train=True, logit_rows=B * S) == _measured(adapter, True, logits_to_keep=0)
    # tiny-llama: d=32, 4 heads x 8, 2 kv heads, ffn 64, 2 layers, vocab 30522, P=4 cached keys
    d, ff, L, V, kv = 32, 64, 2, 30522, 16
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * ff
    T, K = B * S, S + 4
    hand = 2 * L * per_layer * T + L * 2 * (2 * d * T * K) + 2 * d * V * B
    assert flops.count(B, S, train=False) == hand


def test_peak_flops_probe_is_positive():
    assert peak_flops(torch.device("cpu")) > 1e8  # any CPU of this century does 0.1 GFLOP/s


def test_steps_to_target():
    losses = [1.0] * 5 + [0.5] * 5 + [0.1] * 10
    # smoothed over 1 step: the first step within 5% of the improvement (1.0 -> 0.1) is 11
    assert steps_to_target(losses, window=1) == 11
    assert steps_to_target([1.0, 1.0, 1.2]) is None  # no improvement: no step reaches it
    assert steps_to_target([]) is None


def test_tiny_suite_record_carries_efficiency(tmp_path, data):
    from bench.core.records import read_records
    from bench.run.driver import run_cells
    from bench.run.matrix import load_suite

    cells = [c for c in load_suite(None, "tiny") if c.method == "prefix_tuning"]
    counts = run_cells(cells, tmp_path, data, torch.device("cpu"), log=lambda s: None)
    assert counts["failed"] == 0
    (r,) = read_records(tmp_path)[0]
    assert r.status == "ok", r.error
    assert 0 < r.mfu <= 1 and r.peak_flops > 0 and r.achieved_flops > 0
    assert r.train_tokens_per_s > 0 and r.eval_tokens_per_s > 0
    backbone_bytes = sum(p.numel() * p.element_size() for p in
                         backbones.load_backbone("tiny-llama", "causal_lm", 2, "auto", "cpu").model.parameters())
    assert r.peak_memory_bytes > backbone_bytes
    assert 0 <= r.harness_overhead < 1
