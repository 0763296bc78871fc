"""Model FLOPs of a training or evaluation step, the device's measured peak, and MFU.

MFU (model FLOPs utilisation) = achieved model FLOP/s / peak FLOP/s, where

* **peak** is measured, not looked up: the best of several large square matmuls in the
  model's dtype on the same device, once per process (``peak_flops``). On a shared CPU it is
  what the cores gave at start-up; on CUDA it follows the process's TF32 settings.
* **achieved** = model FLOPs per real (non-padding) token x measured tokens/s. Padding is
  therefore waste that lowers MFU, as in PaLM's definition of model FLOPs.

The FLOP count (``StepFlops.count``) is analytic. Only matrix products are counted (as
``torch.utils.flop_counter`` does): norms, softmax, rotary, activations and the optimizer
are not. One multiply-add = 2 FLOPs. The harness names no method: what an adapter adds to
the backbone it declares (``methods.base.Adapter``: ``extra_positions``,
``extra_keys_per_layer``, ``inserted_modules``, ``extra_flops``). With B rows of S
positions entering the body:

* ``T = B * (S + extra_positions)`` positions pass through the body (prompt tuning adds
  its P prompt positions); each attends to ``K = S + extra_positions + extra_keys`` keys
  (prefix methods add P cached keys per layer; no causal halving: kernels and
  FlopCounterMode count the full S x K score matrix).
* forward: ``2 * N_body * T`` for the body's matmul weights (every Linear/Conv1D inside
  the L transformer layers but the adapter's ``inserted_modules``), ``4 * L * H * d_h * T * K``
  for scores and weighted values (H query heads: grouped K/V are repeated to H), and
  ``2 * n * R`` for each head matrix outside the layers (the output layer over R logit
  rows: one per example with the verbalizer's ``logits_to_keep=1``, times ``head_share``,
  the fraction of the matrix's rows used: the verbalizer multiplies by its label words'
  rows only, bench/run/label_head.py; classifier heads are taken as one row per example).
* backward (training only) = activation gradients + weight gradients:
  - every body matmul passes the gradient to its input: ``2 * N_body * T``, except the
    layer-0 matrices that read the embedding output (q/k/v) when nothing before layer 0
    trains (no extra positions, frozen embeddings): autograd skips those products;
  - attention: per layer ``2 * H * d_h * T * K`` for each of dV, dScores, dQ, dK, the
    layer-0 ones only where Q / K / V require grad there (Q: extra positions or a trainable
    tensor under the q projection; K, V: those or extra keys);
  - weight gradients ``2 * n * T`` for each trainable body matrix (full fine-tuning),
    ``2 * n * R`` for a trainable head;
  - the output layer's input gradient ``2 * n * R``.
* plus the adapter's ``extra_flops`` (forward and backward of its own matrix products:
  Prefix-Tuning+'s memory, a prefix MLP on P rows, LoRA's A and B).

Assumption (true for every method here with its default options): something trainable acts
in layer 0, at or before its attention or (Prefix-Tuning+) on its attention output before
the output projection, so gradients flow through every layer's MLP and output projection (layer 0's attention backward is then left out by the
q/k/v flags above). tests/test_flops.py checks the count against
``torch.utils.flop_counter.FlopCounterMode`` for every registered method.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn


def _matmul_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight of a module that does one matmul per row: nn.Linear or GPT-2's Conv1D."""
    if isinstance(module, nn.Linear):
        return module.weight
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers.pytorch_utils.Conv1D
        return module.weight
    return None


def _no_extra(batch: int, seq_len: int, *, train: bool, folded: bool) -> int:
    return 0


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
    extra_positions: int  # positions prepended to every row (prompt tuning)
    extra_keys: int  # keys added to each attention layer (prefix-tuning family)
    input_grad: bool  # the embedding output requires grad (extra positions, trainable embeddings)
    q0_grad: bool
    k0_grad: bool
    v0_grad: bool
    # the adapter's own matmuls (``Adapter.extra_flops``)
    extra: Callable[..., int] = field(default=_no_extra, compare=False, repr=False)

    @classmethod
    def of(cls, adapter: nn.Module) -> StepFlops:
        """Read the structure from an ``Adapter`` (its ``model`` is the backbone), its
        declaration, and which parameters require grad right now."""
        from methods.base import LAYER_INPUT_PROJECTIONS, Anatomy, transformer_layers

        model = adapter.model
        a = Anatomy.of(model)
        layers = transformer_layers(model, a.num_layers)
        in_layers = {id(m) for m in layers.modules()}
        inserted = {id(m) for m in adapter.inserted_modules()}
        body = body_tr = head = head_tr = 0
        for m in model.modules():
            w = _matmul_weight(m)
            if w is None or id(m) in inserted:
                continue
            if id(m) in in_layers:
                body += w.numel()
                body_tr += w.numel() if w.requires_grad else 0
            else:
                head += w.numel()
                head_tr += w.numel() if w.requires_grad else 0
        positions, keys = int(adapter.extra_positions), int(adapter.extra_keys_per_layer)
        emb_trainable = any(p.requires_grad for p in model.get_input_embeddings().parameters())
        input_grad = positions > 0 or emb_trainable
        # layer 0: the backbone's matrices that read the input, and which of q/k/v have
        # trainable tensors (the backbone's or an inserted module's) under their projection
        l0_in, trainable = 0, {"q": False, "k": False, "v": False}
        for name, m in layers[0].named_modules():
            parts = name.split(".")
            proj = next((LAYER_INPUT_PROJECTIONS[p] for p in parts if p in LAYER_INPUT_PROJECTIONS), None)
            if proj is None:
                continue
            w = _matmul_weight(m)
            if w is not None and id(m) not in inserted:
                l0_in += w.numel()
            if any(p.requires_grad for p in m.parameters(recurse=False)):
                for c in proj:
                    trainable[c] = True
        return cls(a.num_layers, a.num_heads, a.head_dim, body, body_tr, l0_in, head, head_tr,
                   positions, keys, input_grad,
                   input_grad or trainable["q"],
                   input_grad or trainable["k"] or keys > 0,
                   input_grad or trainable["v"] or keys > 0,
                   adapter.extra_flops)

    def count(self, batch: int, seq: int, train: bool, logit_rows: int | None = None,
              folded: bool = False, head_share: float = 1.0) -> int:
        """FLOPs of one step on ``batch`` rows of ``seq`` positions (no padding counted apart:
        callers pass real lengths). ``logit_rows``: rows through the head (default ``batch``);
        ``head_share``: the fraction of the head's matrix used (the verbalizer's label rows)."""
        R = (batch if logit_rows is None else logit_rows) * head_share
        T = batch * (seq + self.extra_positions)
        K = seq + self.extra_positions + self.extra_keys
        attn = 2 * self.num_heads * self.head_dim * T * K  # one S x K product over all layers' heads, per layer
        extra = self.extra(batch, seq, train=train, folded=folded)
        fwd = 2 * self.body_params * T + 2 * self.num_layers * attn + 2 * self.head_params * R
        if not train:
            return round(fwd + extra)
        bwd = 2 * self.body_params * T
        if not self.input_grad:
            bwd -= 2 * self.layer0_input_params * T
        l0 = int(self.v0_grad) + int(self.q0_grad or self.k0_grad) + int(self.q0_grad) + int(self.k0_grad)
        bwd += (self.num_layers - 1) * 4 * attn + l0 * attn
        bwd += 2 * self.body_trainable * T + 2 * self.head_trainable * R + 2 * self.head_params * R
        return round(fwd + bwd + extra)

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
