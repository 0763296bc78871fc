"""Prefix-Tuning+ (PrefixMemory-Tuning): Wang et al., "Prefix-Tuning+: Modernizing
Prefix-Tuning by Decoupling the Prefix from Attention", arXiv 2506.13674 (v3, 19 Apr 2026:
"PrefixMemory-Tuning", ICLR 2026; authors' code: github.com/haonan3/PrefixMemory-Tuning).

Per layer, the frozen attention runs untouched and a trainable memory term is added to its
output (before the output projection):

    o_i = Attention(q_i, K, V) + phi(q_i)^T M,     phi(x) = elu(x) + 1   (or gelu(x))

q_i is the layer's query projection (before rotary embedding: M carries no positions).
No prefix keys or values are injected. The paper's derivation: the prefix part of
attention, sum_p sim(q, k_p) v_p with sim(q, k) ~ phi(q)^T phi(k), collapses into the
query-independent matrix sum_p phi(k_p) v_p^T, which the paper then replaces by a free
trainable matrix M.

Two registered forms, because the benchmark's prefix-length axis means something for one
and nothing for the other, and ``Method.uses_prefix_length`` is a class-level fact that
bench/run/matrix.py reads before any config exists (a config option could not switch it):

* ``prefix_tuning_plus`` -- the published form. M is free, one (d_phi, d_v) matrix per
  layer (``per_head``: one (d_h, d_h) per query head), zero at the start, so the attached
  model *is* the frozen backbone (tested bit for bit). phi acts elementwise on the query,
  so d_phi = d_v = H*d_h (per head: d_h): no prefix length appears anywhere, and the
  method has no prefix-length axis (``uses_prefix_length = False``: one cell per seed
  with ``prefix_length = null``, as LoRA). Giving it P cells would train the same model P
  times and show a flat, meaningless "sensitivity to P". Trainable: L*(H*d_h)^2, per head
  L*H*d_h^2.
* ``prefix_tuning_plus_lowrank`` -- our earlier variant, kept for comparison: M = A^T B
  with A: (r, d_phi), B: (r, d_v) and r = the prefix length, i.e. exactly
  sum_p phi(k_p) v_p^T over r trained "memory slots" (feature keys A, values B). B starts
  at zero (identity at init); A is random (std ``init_std``). Trainable: L*r*2*H*d_h.
  Not in the paper.

What we could check against the paper (v1-v3 front matter, abstract, two third-party
summaries; the method section itself was not available to us): the construction above --
the prefix moved out of the softmax, a kernel feature map phi, a trainable memory matrix
M, a query-dependent term added to the attention output. What we could *not* check and
take from the project's methods notes (docs/methods.md of the shared folder): that phi defaults to elu (we use elu(x) + 1, the
positive linear-attention feature map of Katharopoulos et al. 2020 -- the doc says "elu";
the +1 keeps phi(q)^T phi(k) a positive similarity, as a kernel of softmax attention must
be, and is our reading), the gelu alternative, the exact shape of M (we take d_phi = d_v =
the layer's query/output width), and that the term enters before the output projection.

The memory is added by hooks on the attention's query and output projections, found by
name through a small per-architecture table (LLaMA-family incl. Mistral, Qwen2, Gemma; Phi-3's
and GPT-2's fused projections, GPT-NeoX's per-head interleaved one; BERT, RoBERTa), with
unfused LLaMA- or BERT-style names tried for any other model type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.core.config import ConfigError
from methods.base import Adapter, Anatomy, AttachContext, Method, MethodConfig, register_method

FEATURE_MAPS = ("elu", "gelu")


@dataclass(frozen=True)
class Hooks:
    """Where one architecture computes its queries and consumes the attention output."""

    query: str  # regex over module names; group 1 is the layer index
    output: str
    # how the query module's output holds the query: "whole" (it is the query), "first" (a
    # fused [q, k, v] projection, q first: GPT-2's c_attn, Phi-3's qkv_proj) or "per_head"
    # (GPT-NeoX's query_key_value: per head [q, k, v], each head_dim wide)
    layout: str = "whole"


_LLAMA = Hooks(r"layers\.(\d+)\.self_attn\.q_proj$", r"layers\.(\d+)\.self_attn\.o_proj$")
_BERT = Hooks(r"layer\.(\d+)\.attention\.self\.query$", r"layer\.(\d+)\.attention\.output\.dense$")
ARCHITECTURES: dict[str, Hooks] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2"),
                    _LLAMA),
    "phi3": Hooks(r"layers\.(\d+)\.self_attn\.qkv_proj$", r"layers\.(\d+)\.self_attn\.o_proj$", layout="first"),
    "gpt_neox": Hooks(r"layers\.(\d+)\.attention\.query_key_value$", r"layers\.(\d+)\.attention\.dense$",
                      layout="per_head"),
    "gpt2": Hooks(r"h\.(\d+)\.attn\.c_attn$", r"h\.(\d+)\.attn\.c_proj$", layout="first"),
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra"), _BERT),
}
# Tried, in order, for a model type not in the table: separate (unfused) query projections,
# whose output is the query whatever the family.
FALLBACKS = (_LLAMA, _BERT)


def hooks_for(model: nn.Module, model_type: str, num_layers: int) -> Hooks:
    """The table's hooks for ``model_type``; else the first unfused naming that finds one
    query and one output module per layer; else ConfigError naming what is supported."""
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    for hooks in FALLBACKS:
        try:
            find_modules(model, hooks.query, num_layers), find_modules(model, hooks.output, num_layers)
        except RuntimeError:
            continue
        return hooks
    raise ConfigError(f"prefix_tuning_plus does not know where attention lives in model type "
                      f"{model_type!r} (no q_proj/o_proj or BERT-style query per layer); supported: "
                      f"{', '.join(sorted(ARCHITECTURES))}")


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

    def __post_init__(self) -> None:
        if self.feature_map not in FEATURE_MAPS:
            raise ConfigError(f"feature_map {self.feature_map!r} is not one of {', '.join(FEATURE_MAPS)}")


@dataclass(frozen=True)
class PrefixTuningPlusLowRankConfig(PrefixTuningPlusConfig):
    init_std: float = field(default=-1.0, metadata={
        "help": "std of the feature keys A (B starts at zero); <= 0: 1/sqrt(d_phi)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not math.isfinite(self.init_std):
            raise ConfigError(f"init_std must be a finite number, got {self.init_std!r}")


def feature_map(name: str, x: torch.Tensor) -> torch.Tensor:
    """phi: elu(x) + 1 (positive, the linear-attention kernel) or gelu(x)."""
    if name == "elu":
        return nn.functional.elu(x) + 1
    return nn.functional.gelu(x)


class MemoryAdapter(Adapter):
    """Adds phi(q)^T M to every layer's attention output. ``rank = None``: M is a free
    (G, d_phi, d_v) tensor per layer (``memory``, zero-initialised); an int r: M = A^T B with
    ``keys`` A: (G, r, d_phi) random and ``values`` B: (G, r, d_v) zero."""

    def __init__(self, model: nn.Module, ctx: AttachContext, rank: int | None,
                 config: PrefixTuningPlusConfig) -> None:
        super().__init__(model)
        a = ctx.anatomy
        hooks = hooks_for(model, a.model_type, a.num_layers)
        self.config = config
        self.head_dim = a.head_dim
        self.rank = rank
        self.num_layers = a.num_layers
        self.d_q = a.num_heads * a.head_dim
        self.groups = a.num_heads if config.per_head else 1
        d = self.d_q // self.groups
        if rank is None:
            self.memory = nn.Parameter(torch.zeros(a.num_layers, self.groups, d, d))  # M
        else:
            init_std = getattr(config, "init_std", -1.0)
            std = init_std if init_std > 0 else d ** -0.5
            g = torch.Generator().manual_seed(ctx.seed)
            self.keys = nn.Parameter(torch.randn(a.num_layers, self.groups, rank, d, generator=g) * std)  # A
            self.values = nn.Parameter(torch.zeros(a.num_layers, self.groups, rank, d))  # B
        self._queries: dict[int, torch.Tensor] = {}
        self._packed: list[tuple[MemoryAdapter, int]] | None = None  # set by packed_forward
        self._handles = []
        for i, module in enumerate(find_modules(model, hooks.query, a.num_layers)):
            self._handles.append(module.register_forward_hook(self._keep_query(i, hooks.layout)))
        for i, module in enumerate(find_modules(model, hooks.output, a.num_layers)):
            self._handles.append(module.register_forward_pre_hook(self._add_memory(i)))

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return feature_map(self.config.feature_map, x)

    def _keep_query(self, layer: int, layout: str):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if layout == "first":
                output = output[..., :self.d_q]
            elif layout == "per_head":
                heads = self.d_q // self.head_dim
                output = output.view(*output.shape[:-1], heads, 3 * self.head_dim)[..., :self.head_dim].flatten(-2)
            self._queries[layer] = output
        return hook

    def _add_memory(self, layer: int):
        def hook(module: nn.Module, args: tuple) -> tuple:
            q = self._queries.pop(layer, None)
            if q is None:
                raise RuntimeError(f"prefix_tuning_plus: layer {layer}'s query hook did not run")
            attn = args[0]
            # in the memory's own precision (fp32 on a bf16 backbone: the sums over d_phi and r
            # in bf16 drift 6x the backbone's own bf16 error on SmolLM2), cast once at the end
            dtype = torch.promote_types(q.dtype, self._memory_dtype())
            feats = self.phi(q.to(dtype).view(*q.shape[:-1], self.groups, -1))  # (..., G, d_phi)
            if self._packed is None:
                memory = self._memory(layer, feats)
            else:  # packed_forward: each adapter's memory on its own rows
                bounds = torch.tensor([0, *(n for _, n in self._packed)]).cumsum(0).tolist()
                memory = torch.cat([a._memory(layer, feats[lo:hi]) for (a, _), lo, hi
                                    in zip(self._packed, bounds, bounds[1:], strict=False)])
            return (attn + memory.reshape(attn.shape).to(attn.dtype),) + tuple(args[1:])
        return hook

    def _memory_dtype(self) -> torch.dtype:
        return (self.memory if self.rank is None else self.values).dtype

    def _memory(self, layer: int, feats: torch.Tensor) -> torch.Tensor:
        """phi(q)^T M for features (..., G, d_phi) -> (..., G, d_v), in the features' dtype."""
        if self.rank is None:
            return torch.einsum("...gd,gde->...ge", feats, self.memory[layer].to(feats.dtype))
        A, B = self.keys[layer].to(feats.dtype), self.values[layer].to(feats.dtype)
        memory = torch.einsum("...gd,grd->...gr", feats, A)
        return torch.einsum("...gr,gre->...ge", memory, B)

    @classmethod
    def packed_forward(cls, adapters: Sequence[MemoryAdapter], rows: Sequence[int], **kwargs: Any) -> Any:
        """``adapters[0]``'s backbone, its hooks adding each adapter's memory to that adapter's
        rows (a low-rank memory's rank may differ between adapters)."""
        lead = adapters[0]
        lead._packed = list(zip(adapters, rows, strict=True))
        try:
            return lead(**kwargs)
        finally:
            lead._packed = None

    def memory_matrix(self, layer: int) -> torch.Tensor:
        """M for one layer: (G, d_phi, d_v) (the low-rank form: A^T B)."""
        if self.rank is None:
            return self.memory[layer]
        return self.keys[layer].transpose(-1, -2) @ self.values[layer]

    def _memory_matmuls(self) -> tuple[int, int]:
        """(multiply-adds per position over all layers, of which those whose input is the
        frozen query at layer 0, so autograd computes no input gradient for them)."""
        L, d = self.num_layers, self.d_q // self.groups
        if self.rank is None:
            per_layer = self.groups * d * d
            return L * per_layer, per_layer
        reads_q = self.groups * self.rank * d  # phi(q) A; the B product reads a trained tensor
        return L * 2 * reads_q, reads_q

    def extra_flops(self, batch: int, seq_len: int, *, train: bool, folded: bool) -> int:
        """phi(q)^T M at every position of every layer: 2n per position forward; training adds
        M's gradient (2n) and phi(q)'s (2n), except at layer 0, whose query comes from frozen
        weights on the frozen embeddings."""
        n, frozen_input = self._memory_matmuls()
        T = batch * seq_len
        fwd = 2 * n * T
        return fwd + 2 * n * T + 2 * (n - frozen_input) * T if train else fwd


@register_method("prefix_tuning_plus")
class PrefixTuningPlus(Method[PrefixTuningPlusConfig]):
    """The published form: a free, zero-initialised M per layer; no prefix-length axis."""

    paper = "Wang et al., arXiv 2506.13674 (PrefixMemory-Tuning, ICLR 2026)"
    Config = PrefixTuningPlusConfig
    uses_prefix_length = False
    default_lr = 1e-3
    version = "2"  # 1 was the low-rank form, now prefix_tuning_plus_lowrank
    identity_at_init = True
    packable = True  # MemoryAdapter.packed_forward: each adapter's memory on its own rows

    def rank(self) -> int | None:
        return None

    def attach(self, model: nn.Module, ctx: AttachContext) -> MemoryAdapter:
        return MemoryAdapter(model, ctx, self.rank(), self.config).to(ctx.device)

    def trainable_count(self, adapter: Adapter, anatomy: Anatomy) -> int:
        """L * G * d_phi * d_v = L * (H*d_h)^2 per layer, L * H * d_h^2 per head."""
        d_q = anatomy.num_heads * anatomy.head_dim
        groups = anatomy.num_heads if self.config.per_head else 1
        return anatomy.num_layers * groups * (d_q // groups) ** 2


@register_method("prefix_tuning_plus_lowrank")
class PrefixTuningPlusLowRank(PrefixTuningPlus):
    """Not in the paper: M = A^T B of rank r = the prefix length (r memory slots)."""

    Config = PrefixTuningPlusLowRankConfig
    config: PrefixTuningPlusLowRankConfig
    uses_prefix_length = True
    version = "1"

    def rank(self) -> int | None:
        return self.prefix_length

    def trainable_count(self, adapter: Adapter, anatomy: Anatomy) -> int:
        """L * r * (d_phi + d_v) * G = L * r * 2 * H * d_h."""
        return anatomy.num_layers * self.prefix_length * 2 * anatomy.num_heads * anatomy.head_dim
