"""Prefix-Tuning+ (PrefixMemory-Tuning): Wang et al., "Prefix-Tuning+: Modernizing
Prefix-Tuning by Decoupling the Prefix from Attention", arXiv 2506.13674 (v3: ICLR 2026).

Per layer, the frozen attention runs untouched and a trainable memory term is added to its
output (before the output projection):

    o_i = Attention(q_i, K, V) + phi(q_i)^T M,     phi(x) = elu(x) + 1   (or gelu(x))

q_i is the layer's query projection (before rotary embedding: M carries no positions).
No prefix keys or values are injected. The paper's derivation: the prefix part of
attention, sum_p sim(q, k_p) v_p, kernelised as phi(q)^T sum_p phi(k_p) v_p^T, collapses
into one matrix M; the paper then frees M.

How the benchmark's ``prefix_length`` axis maps here: it is the number r of memory slots,
the rank of M. We store M = A^T B with A: (r, d_phi) and B: (r, d_v): exactly the form
sum_p phi(k_p) v_p^T of r prefix tokens, with the feature keys A and values B trained
freely instead of being produced by attention. B starts at zero, so at the start the
model *is* the frozen backbone (tested bit for bit). ``per_head = False`` (default, the
paper's per-layer form): phi acts on the whole query (d_phi = d_v = H*d_h); True: one
memory per query head (d_phi = d_v = d_h). Trainable parameters: L * r * 2 * H * d_h
either way.

The memory is added by hooks on the attention's query and output projections, found by
name through a small per-architecture table (LLaMA-family, GPT-2, BERT).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.config import ConfigError
from methods.base import Adapter, Anatomy, AttachContext, Method, MethodConfig, register_method

FEATURE_MAPS = ("elu", "gelu")


@dataclass(frozen=True)
class Hooks:
    """Where one architecture computes its queries and consumes the attention output."""

    query: str  # regex over module names; group 1 is the layer index
    output: str
    query_slice: bool = False  # the query module emits [q, k, v] fused (GPT-2's c_attn)


ARCHITECTURES: dict[str, Hooks] = {
    "llama": Hooks(r"layers\.(\d+)\.self_attn\.q_proj$", r"layers\.(\d+)\.self_attn\.o_proj$"),
    "gpt2": Hooks(r"h\.(\d+)\.attn\.c_attn$", r"h\.(\d+)\.attn\.c_proj$", query_slice=True),
    "bert": Hooks(r"layer\.(\d+)\.attention\.self\.query$", r"layer\.(\d+)\.attention\.output\.dense$"),
}


def find_modules(model: nn.Module, pattern: str, num_layers: int) -> list[nn.Module]:
    found: dict[int, nn.Module] = {}
    for name, module in model.named_modules():
        m = re.search(pattern, name)
        if m:
            found[int(m.group(1))] = module
    if sorted(found) != list(range(num_layers)):
        raise RuntimeError(f"expected one module per layer for {pattern!r}, found layers {sorted(found)}")
    return [found[i] for i in range(num_layers)]


@dataclass(frozen=True)
class PrefixTuningPlusConfig(MethodConfig):
    feature_map: str = field(default="elu", metadata={"help": "phi: elu (elu(x)+1, the paper's default) or gelu"})
    per_head: bool = field(default=False, metadata={
        "help": "one memory per query head instead of one per layer over the whole query"})
    init_std: float = field(default=-1.0, metadata={
        "help": "std of the feature keys A (B starts at zero); <= 0: 1/sqrt(d_phi)"})

    def __post_init__(self) -> None:
        if self.feature_map not in FEATURE_MAPS:
            raise ConfigError(f"feature_map {self.feature_map!r} is not one of {', '.join(FEATURE_MAPS)}")


class MemoryAdapter(Adapter):
    def __init__(self, model: nn.Module, ctx: AttachContext, rank: int, config: PrefixTuningPlusConfig) -> None:
        super().__init__(model)
        a = ctx.anatomy
        if a.model_type not in ARCHITECTURES:
            raise ConfigError(f"prefix_tuning_plus does not know where attention lives in model type "
                              f"{a.model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
        hooks = ARCHITECTURES[a.model_type]
        self.config = config
        self.d_q = a.num_heads * a.head_dim
        self.groups = a.num_heads if config.per_head else 1
        d = self.d_q // self.groups
        std = config.init_std if config.init_std > 0 else d ** -0.5
        g = torch.Generator().manual_seed(ctx.seed)
        self.keys = nn.Parameter(torch.randn(a.num_layers, self.groups, rank, d, generator=g) * std)  # A
        self.values = nn.Parameter(torch.zeros(a.num_layers, self.groups, rank, d))  # B
        self._queries: dict[int, torch.Tensor] = {}
        self._handles = []
        for i, module in enumerate(find_modules(model, hooks.query, a.num_layers)):
            self._handles.append(module.register_forward_hook(self._keep_query(i, hooks.query_slice)))
        for i, module in enumerate(find_modules(model, hooks.output, a.num_layers)):
            self._handles.append(module.register_forward_pre_hook(self._add_memory(i)))

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.feature_map == "elu":
            return nn.functional.elu(x) + 1
        return nn.functional.gelu(x)

    def _keep_query(self, layer: int, fused: bool):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            self._queries[layer] = output[..., :self.d_q] if fused else output
        return hook

    def _add_memory(self, layer: int):
        def hook(module: nn.Module, args: tuple) -> tuple:
            q = self._queries.pop(layer, None)
            if q is None:
                raise RuntimeError(f"prefix_tuning_plus: layer {layer}'s query hook did not run")
            attn = args[0]
            feats = self.phi(q.view(*q.shape[:-1], self.groups, -1))  # (..., G, d_phi)
            A, B = self.keys[layer].to(q.dtype), self.values[layer].to(q.dtype)
            memory = torch.einsum("...gd,grd->...gr", feats, A)
            memory = torch.einsum("...gr,gre->...ge", memory, B)
            return (attn + memory.reshape(attn.shape),) + tuple(args[1:])
        return hook

    def memory_matrix(self, layer: int) -> torch.Tensor:
        """M = A^T B for one layer: (G, d_phi, d_v)."""
        return self.keys[layer].transpose(-1, -2) @ self.values[layer]


@register_method("prefix_tuning_plus")
class PrefixTuningPlus(Method):
    paper = "Wang et al., arXiv 2506.13674 (PrefixMemory-Tuning, ICLR 2026)"
    Config = PrefixTuningPlusConfig
    default_lr = 1e-3
    identity_at_init = True

    def attach(self, model: nn.Module, ctx: AttachContext) -> MemoryAdapter:
        return MemoryAdapter(model, ctx, self.prefix_length, self.config).to(ctx.device)

    def trainable_count(self, model: nn.Module, anatomy: Anatomy) -> int:
        """L * r * (d_phi + d_v) * G = L * r * 2 * H * d_h."""
        return anatomy.num_layers * self.prefix_length * 2 * anatomy.num_heads * anatomy.head_dim
