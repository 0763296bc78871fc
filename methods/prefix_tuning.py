"""Prefix-Tuning: Li & Liang, "Prefix-Tuning: Optimizing Continuous Prompts for
Generation", ACL 2021 (https://aclanthology.org/2021.acl-long.353).

Per-layer key/value prefixes, optionally reparameterised while training by an MLP
(Embedding(P, d) -> Linear d->mid -> Tanh -> Linear mid -> L*2*d_kv). For evaluation and
generation the MLP output is computed once and cached (``fold``), so inference does no MLP
work. Our own implementation (not PEFT's) so that init strategies, folding and the
subclasses (P-tuning v2, residual/gated prefixes) share one mechanism; tests check it gives
PEFT's logits when both hold the same prefix tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bench.core.config import ConfigError
from methods.base import Adapter, Anatomy, AttachContext, Method, MethodConfig, register_method
from methods.kv_prefix import (
    KVPrefixAdapter,
    activation_kv,
    flat_to_kv,
    init_token_ids,
    kv_to_flat,
)

INITS = ("vocab", "text", "random")


MAX_WIDTH = 65536  # 128x the default; the MLP's parameters grow linearly with it


@dataclass(frozen=True)
class PrefixTuningConfig(MethodConfig):
    projection: bool = field(default=True, metadata={
        "help": "train through the MLP reparameterisation (Li & Liang); False trains the prefix directly"})
    mid_dim: int = field(default=512, metadata={"help": "hidden width of the reparameterisation MLP"})
    init: str = field(default="vocab", metadata={
        "help": "vocab: real activations/embeddings of sampled frequent tokens; text: of init_text; "
                "random: N(0, init_std)"})
    init_text: str = field(default="Classify the sentiment of the following text.", metadata={
        "help": "prompt whose key/values (or embeddings) initialise the prefix when init = 'text'"})
    init_std: float = field(default=0.02, metadata={"help": "std of the random init"})
    shift_positions: bool = field(default=True, metadata={
        "help": "inputs' position ids start after the prefix (Li & Liang's GPT-2 `past`, PEFT); "
                "False keeps the backbone's own positions"})

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"init {self.init!r} is not one of {', '.join(INITS)}")
        if not 1 <= self.mid_dim <= MAX_WIDTH:
            raise ConfigError(f"mid_dim must be in [1, {MAX_WIDTH}], got {self.mid_dim}: the MLP's output "
                              "matrix alone is mid_dim x 2 x layers x width numbers")
        if self.init_std <= 0:
            raise ConfigError(f"init_std must be > 0, got {self.init_std}")


class PrefixTuningAdapter(KVPrefixAdapter):
    def __init__(self, model: nn.Module, ctx: AttachContext, P: int, config: PrefixTuningConfig) -> None:
        super().__init__(model, ctx.anatomy, P, shift_positions=config.shift_positions)
        a = ctx.anatomy
        self.config = config
        out_dim = a.num_layers * 2 * a.kv_dim
        g = torch.Generator().manual_seed(ctx.seed)
        if config.projection:
            # Li & Liang initialise the reparameterised prefix from real word embeddings.
            if config.init == "random":
                emb = torch.randn(P, a.hidden_size, generator=g) * config.init_std
            else:
                ids = init_token_ids(ctx, P, config.init, config.init_text, model)
                emb = model.get_input_embeddings().weight[ids].detach().float().clone()
            self.embedding = nn.Parameter(emb)
            self.mlp = nn.Sequential(nn.Linear(a.hidden_size, config.mid_dim), nn.Tanh(),
                                     nn.Linear(config.mid_dim, out_dim))
        else:
            if config.init == "random":
                flat = torch.randn(P, out_dim, generator=g) * config.init_std
            else:
                ids = init_token_ids(ctx, P, config.init, config.init_text, model)
                flat = kv_to_flat(activation_kv(model, ids.to(ctx.device), a)).cpu()
            self.prefix = nn.Parameter(flat)

    def flat_prefix(self) -> torch.Tensor:
        """(P, L*2*H_kv*d_h): the prefix in PEFT's layout."""
        if self.config.projection:
            return self.mlp(self.embedding)
        return self.prefix

    def prefix_kv(self) -> torch.Tensor:
        return flat_to_kv(self.flat_prefix(), self.anatomy)


@register_method("prefix_tuning")
class PrefixTuning(Method[PrefixTuningConfig]):
    paper = "Li & Liang, ACL 2021, https://aclanthology.org/2021.acl-long.353"
    Config = PrefixTuningConfig
    default_lr = 1e-3
    peft_export_type = "PREFIX_TUNING"  # the folded prefix, without the MLP
    packable = True  # KVPrefixAdapter.packed_forward: one prefix per row

    def attach(self, model: nn.Module, ctx: AttachContext) -> PrefixTuningAdapter:
        return PrefixTuningAdapter(model, ctx, self.prefix_length, self.config).to(ctx.device)

    def trainable_count(self, adapter: Adapter, anatomy: Anatomy) -> int:
        """P*L*2*d_kv directly; with the MLP: P*d + (d*m + m) + (m*L*2*d_kv + L*2*d_kv)."""
        c, P = self.config, self.prefix_length
        out = anatomy.num_layers * 2 * anatomy.kv_dim
        if not c.projection:
            return P * out
        d, m = anatomy.hidden_size, c.mid_dim
        return P * d + d * m + m + m * out + out
