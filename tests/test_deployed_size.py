"""Deployed size: prefix methods ship the folded prefix, not the MLP that trained it; the
record carries training-time and inference-time figures apart."""

from __future__ import annotations

import pytest
import torch
from test_method_contract import attach, inputs, train_steps

from bench.core.records import read_records
from bench.run.artefacts import save_adapter, save_state
from bench.run.driver import run_cells
from bench.run.matrix import expand
from methods.base import load_inference_adapter

P = 3


@pytest.mark.parametrize("backbone", ["tiny-llama", "tiny-gpt2"])
def test_prefix_tuning_deploys_the_folded_prefix(backbone: str, tmp_path) -> None:
    method, model, adapter, _ = attach("prefix_tuning", backbone, "causal_lm")
    assert method.config.projection  # the MLP reparameterisation is on by default
    train_steps(adapter, "causal_lm", steps=2)
    a = adapter.anatomy
    folded = P * a.num_layers * 2 * a.kv_dim
    state = adapter.inference_state_dict()
    assert sum(t.numel() for t in state.values()) == folded
    _, deployed = save_state(state, tmp_path / "deployed.safetensors")
    _, trained = save_adapter(adapter, tmp_path / "trained.safetensors")
    assert folded * 4 <= deployed <= folded * 4 + 512  # fp32 tensor plus the safetensors header
    assert trained > 10 * deployed  # the MLP (mid_dim 512) is most of the training-time state

    _, _, fresh, _ = attach("prefix_tuning", backbone, "causal_lm", seed=1)
    load_inference_adapter(fresh, tmp_path / "deployed.safetensors")
    adapter.fold()
    fresh.fold()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs("causal_lm")).logits, adapter(**inputs("causal_lm")).logits,
                                   rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="cannot train"):
        fresh.unfold()  # the generator is gone: training it would start from a fresh MLP


def test_residual_prefix_deploys_its_gates_with_the_prefix() -> None:
    _, _, adapter, _ = attach("residual_prefix", "tiny-llama", "causal_lm")
    state = adapter.inference_state_dict()
    assert set(state) == {"prefix_kv", "gate_logit"} and state["gate_logit"].shape == (P,)


def test_rows_carry_training_and_deployed_figures(tmp_path, data) -> None:
    doc = {"suites": {"t": {"methods": ["prefix_tuning", "lora"], "tasks": ["glue/sst2"],
                            "backbones": ["tiny-llama"], "prefix_lengths": [2], "seeds": [0],
                            "train": {"train_steps": 2, "batch_size": 4, "eval_limit": 8, "train_limit": 16,
                                      "max_length": 32}}}}
    counts = run_cells(expand(doc, "t"), tmp_path, data, torch.device("cpu"), log=lambda s: None)
    assert counts["failed"] == 0
    rows = {r.method: r for r in read_records(tmp_path)[0]}
    pt, lora = rows["prefix_tuning"], rows["lora"]
    kv = 2 * 2 * 2 * 16  # P=2, tiny-llama: 2 layers, k and v, 2 kv heads x 8
    assert pt.inference_params == kv < pt.trainable_params
    assert pt.inference_bytes < pt.adapter_bytes and pt.inference_path.endswith(".inference.safetensors")
    # nothing folds away from LoRA: one file, one figure
    assert (lora.inference_params, lora.inference_bytes, lora.inference_path) == \
        (lora.trainable_params, lora.adapter_bytes, lora.adapter_path)
