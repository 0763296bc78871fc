"""Model FLOPs of a training or evaluation step, the device's measured peak, and MFU.

MFU (model FLOPs utilisation) = achieved model FLOP/s / peak FLOP/s, where

* **peak** is measured, not looked up: the best of several large square matmuls in the
  model's dtype on the same device, once per process (``peak_flops``). On a shared CPU it is
  what the cores gave at start-up; on CUDA it follows the process's TF32 settings.
* **achieved** = model FLOPs per real (non-padding) token x measured tokens/s. Padding is
  therefore waste that lowers MFU, as in PaLM's definition of model FLOPs.

The FLOP count (``StepFlops.count``) is analytic. Only matrix products are counted (as
``torch.utils.flop_counter`` does): norms, softmax, rotary, activations and the optimizer
are not. One multiply-add = 2 FLOPs. With B rows of S positions entering the body:

* ``T = B * (S + prompt)`` positions pass through the body (prompt tuning adds its P
  prompt positions); each attends to ``K = S + prompt + kv_prefix`` keys (prefix methods
  add P cached keys per layer; no causal halving: kernels and FlopCounterMode count the
  full S x K score matrix).
* forward: ``2 * N_body * T`` for the body's matmul weights (every Linear/Conv1D inside
  the L transformer layers, LoRA's A and B included, and the matmuls an adapter reports
  through ``body_matmuls()``: Prefix-Tuning+'s phi(q)^T M in every layer), ``4 * L * H * d_h * T * K`` for
  scores and weighted values (H query heads: grouped K/V are repeated to H), ``2 * n * R``
  for each head matrix outside the layers (the output layer over R logit rows: one per
  example with the verbalizer's ``logits_to_keep=1``, times ``head_share``, the fraction
  of the matrix's rows used: the verbalizer multiplies by its label words' rows only,
  bench/run/label_head.py; classifier heads are taken as one row per example), and ``2 * n * P`` for each reparameterisation matrix of the adapter
  (the prefix MLP runs on P rows per step, not per example; zero once folded).
* backward (training only) = activation gradients + weight gradients:
  - every body matmul passes the gradient to its input: ``2 * N_body * T``, except the
    layer-0 matrices that read the embedding output (q/k/v, LoRA's A) when nothing before
    layer 0 trains (no prompt, frozen embeddings): autograd skips those products;
  - attention: per layer ``2 * H * d_h * T * K`` for each of dV, dScores, dQ, dK, the
    layer-0 ones only where Q / K / V require grad there (Q: prompt or a trainable q;
    K, V: those or a KV prefix);
  - weight gradients ``2 * n * T`` for each trainable body matrix (LoRA, full fine-tuning),
    ``2 * n * R`` for a trainable head, and for the reparameterisation MLP ``4 * n * P``
    (weight and input gradients);
  - the output layer's input gradient ``2 * n * R``.

Assumption (true for every method here): something trainable acts in layer 0, at or before
its attention or (Prefix-Tuning+) on its attention output, so gradients flow through every
layer's MLP and output projection (layer 0's attention backward is then left out by the
q/k/v flags above). tests/test_flops.py checks the count
against ``torch.utils.flop_counter.FlopCounterMode`` (eager attention) for several methods.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

# names of the projections that read a layer's input (LLaMA, GPT-2's fused c_attn, BERT)
INPUT_PROJECTIONS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "query": "q", "key": "k", "value": "v",
                     "c_attn": "qkv", "qkv_proj": "qkv", "Wqkv": "qkv"}


def _matmul_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight of a module that does one matmul per row: nn.Linear or GPT-2's Conv1D."""
    if isinstance(module, nn.Linear):
        return module.weight
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers.pytorch_utils.Conv1D
        return module.weight
    return None


def _layer_list(model: nn.Module, num_layers: int) -> nn.ModuleList:
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise ValueError(f"no ModuleList of {num_layers} transformer layers found in {type(model).__name__}")


@dataclass(frozen=True)
class StepFlops:
    """What the FLOP count needs to know about an adapted model (see module docstring)."""

    num_layers: int
    num_heads: int
    head_dim: int
    body_params: int  # matmul weights in all layers (applied at every position)
    body_trainable: int  # of which trainable
    layer0_input_params: int  # layer-0 matmul weights that read the embedding output
    head_params: int  # matmul weights outside the layers (output layer, classifier)
    head_trainable: int
    reparam_params: int  # adapter matmuls outside the backbone (prefix MLP), on P rows
    prompt_positions: int  # extra positions through the body (prompt tuning)
    kv_prefix: int  # extra keys per layer (prefix-tuning family)
    reparam_rows: int
    input_grad: bool  # the embedding output requires grad (prompt tuning, trainable embeddings)
    q0_grad: bool
    k0_grad: bool
    v0_grad: bool

    @classmethod
    def of(cls, adapter: nn.Module) -> StepFlops:
        """Read the structure from an ``Adapter`` (its ``model`` is the backbone) and from
        which parameters require grad right now."""
        from methods.base import Anatomy
        from methods.kv_prefix import KVPrefixAdapter
        from methods.prompt_tuning import SoftPromptAdapter

        model = adapter.model
        a = Anatomy.of(model)
        layers = _layer_list(model, a.num_layers)
        in_layers = {id(m) for m in layers.modules()}
        body = body_tr = head = head_tr = 0
        for m in model.modules():
            w = _matmul_weight(m)
            if w is None:
                continue
            if id(m) in in_layers:
                body += w.numel()
                body_tr += w.numel() if w.requires_grad else 0
            else:
                head += w.numel()
                head_tr += w.numel() if w.requires_grad else 0
        in_backbone = {id(m) for m in model.modules()}
        reparam = sum(w.numel() for m in adapter.modules() if id(m) not in in_backbone
                      and (w := _matmul_weight(m)) is not None)
        # matmuls an adapter adds inside the layers, on every position (Prefix-Tuning+'s memory):
        # all trainable; ``extra_l0`` of them read only frozen layer-0 tensors (no input gradient)
        extra, extra_l0 = adapter.body_matmuls() if hasattr(adapter, "body_matmuls") else (0, 0)
        body, body_tr = body + extra, body_tr + extra
        prompt = int(adapter.prompt.shape[0]) if isinstance(adapter, SoftPromptAdapter) else 0
        kv_prefix = int(adapter.prefix_length) if isinstance(adapter, KVPrefixAdapter) else 0
        emb_trainable = any(p.requires_grad for p in model.get_input_embeddings().parameters())
        input_grad = prompt > 0 or emb_trainable
        # layer 0: which projections read the input, and which of q/k/v have trainable weights
        l0_in, trainable = 0, {"q": False, "k": False, "v": False}
        for name, m in layers[0].named_modules():
            parts = name.split(".")
            proj = next((INPUT_PROJECTIONS[p] for p in parts if p in INPUT_PROJECTIONS), None)
            if proj is None:
                continue
            w = _matmul_weight(m)
            if w is not None and "lora_B" not in parts:
                l0_in += w.numel()
            if any(p.requires_grad for p in m.parameters(recurse=False)):
                for c in proj:
                    trainable[c] = True
        return cls(a.num_layers, a.num_heads, a.head_dim, body, body_tr, l0_in + extra_l0, head, head_tr, reparam,
                   prompt, kv_prefix, kv_prefix, input_grad,
                   input_grad or trainable["q"],
                   input_grad or trainable["k"] or kv_prefix > 0,
                   input_grad or trainable["v"] or kv_prefix > 0)

    def count(self, batch: int, seq: int, train: bool, logit_rows: int | None = None,
              folded: bool = False, head_share: float = 1.0) -> int:
        """FLOPs of one step on ``batch`` rows of ``seq`` positions (no padding counted apart:
        callers pass real lengths). ``logit_rows``: rows through the head (default ``batch``);
        ``head_share``: the fraction of the head's matrix used (the verbalizer's label rows)."""
        R = (batch if logit_rows is None else logit_rows) * head_share
        T = batch * (seq + self.prompt_positions)
        K = seq + self.prompt_positions + self.kv_prefix
        attn = 2 * self.num_heads * self.head_dim * T * K  # one S x K product over all layers' heads, per layer
        reparam_rows = 0 if folded else self.reparam_rows
        fwd = 2 * self.body_params * T + 2 * self.num_layers * attn + 2 * self.head_params * R \
            + 2 * self.reparam_params * reparam_rows
        if not train:
            return round(fwd)
        bwd = 2 * self.body_params * T
        if not self.input_grad:
            bwd -= 2 * self.layer0_input_params * T
        l0 = int(self.v0_grad) + int(self.q0_grad or self.k0_grad) + int(self.q0_grad) + int(self.k0_grad)
        bwd += (self.num_layers - 1) * 4 * attn + l0 * attn
        bwd += 2 * self.body_trainable * T + 2 * self.head_trainable * R + 2 * self.head_params * R
        bwd += 4 * self.reparam_params * reparam_rows
        return round(fwd + bwd)

    def per_token(self, batch: int, mean_len: float, train: bool, **kw) -> float:
        """FLOPs per real token for rows of (about) ``mean_len`` tokens."""
        seq = max(1, round(mean_len))
        return self.count(batch, seq, train, **kw) / (batch * seq)


@lru_cache(maxsize=8)
def _peak(device: str, dtype: torch.dtype, n: int, repeats: int) -> float:
    dev = torch.device(device)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    best = 0.0
    for i in range(repeats + 2):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        if i >= 2 and dt > 0:  # the first calls warm up kernels and allocators
            best = max(best, 2 * n ** 3 / dt)
    return best


def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """Measured peak FLOP/s: the fastest of several square matmuls (1024 on CPU, 8192 on
    CUDA) in ``dtype``; cached per process, device and dtype."""
    n = 8192 if device.type == "cuda" else 1024
    return _peak(str(device), dtype, n, 10)


def mfu(achieved: float, peak: float) -> float | None:
    return achieved / peak if peak > 0 and achieved > 0 else None
