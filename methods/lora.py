"""LoRA: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022
(https://arxiv.org/abs/2106.09685), through HF PEFT: the reference that Prefix-Tuning+
measures against. The matrix's prefix-length axis does not apply to it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bench.core.config import ConfigError
from methods.base import (
    LAYER_INPUT_PROJECTIONS,
    Adapter,
    Anatomy,
    AttachContext,
    Method,
    MethodConfig,
    register_method,
    transformer_layers,
)

MAX_RANK = 4096  # above every registered backbone's hidden size (SmolLM2-135M: 576)


@dataclass(frozen=True)
class LoraConfig(MethodConfig):
    r: int = field(default=8, metadata={"help": "rank of the update"})
    alpha: int = field(default=16, metadata={"help": "scaling numerator (update scaled by alpha/r)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch"})
    target_modules: tuple[str, ...] | None = field(default=None, metadata={
        "help": "module names to adapt; None: PEFT's default for the architecture (q and v), else the "
                "model's query/value or fused qkv projection"})

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"r must be >= 1, got {self.r}")
        if self.r > MAX_RANK:
            raise ConfigError(f"r {self.r} is above {MAX_RANK}, the largest allowed: A and B grow with r "
                              "(r x width per adapted matrix), and past the widest hidden size here the update "
                              "is not low-rank")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


# Attention projections to adapt when PEFT has no default for a model type (it has none for
# Phi-3): the first naming the model uses, queries and values as PEFT's defaults choose.
FALLBACK_TARGETS = (("q_proj", "v_proj"), ("qkv_proj",), ("query_key_value",), ("c_attn",), ("query", "value"),
                    ("Wqkv",))


def default_targets(model: nn.Module, model_type: str) -> list[str]:
    """PEFT's default target modules for ``model_type``, else ``FALLBACK_TARGETS``' first match."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    if model_type in defaults:
        return list(defaults[model_type])
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for targets in FALLBACK_TARGETS:
        if set(targets) <= names:
            return list(targets)
    raise ConfigError(f"lora: PEFT has no default target modules for model type {model_type!r} and none of "
                      f"{[list(t) for t in FALLBACK_TARGETS]} is in the model; set target_modules")


class PeftAdapter(Adapter):
    """Wraps a model with LoRA layers injected by PEFT; only the PEFT-trainable tensors form
    the adapter."""

    def __init__(self, model: nn.Module, anatomy: Anatomy, peft_config: Any = None) -> None:
        super().__init__(model)
        self.anatomy = anatomy
        self.peft_config = peft_config  # the peft.LoraConfig the layers were injected with

    def _pairs(self) -> Iterator[tuple[str, nn.Linear, nn.Linear]]:
        """(name of the adapted module, A, B) for every LoRA update in the model."""
        from peft.tuners.lora import LoraLayer

        for name, module in self.model.named_modules():
            if isinstance(module, LoraLayer):
                for key in module.lora_A:
                    yield name, module.lora_A[key], module.lora_B[key]

    def peft_export(self, task_type: str) -> tuple[Any, dict[str, Any]]:
        """The LoRA config we injected with, its targets named as the adapted modules' own
        names, and A and B under the keys PEFT saves them with."""
        if self.peft_config is None:
            raise ValueError("this LoRA adapter was built without its peft.LoraConfig; attach it with Lora.attach")
        pairs = list(self._pairs())
        config = dataclasses.replace(self.peft_config, task_type=task_type,
                                     target_modules=sorted({name.rsplit(".", 1)[-1] for name, _, _ in pairs}))
        state = {}
        for name, A, B in pairs:
            state[f"base_model.model.{name}.lora_A.weight"] = A.weight.detach().contiguous().clone()
            state[f"base_model.model.{name}.lora_B.weight"] = B.weight.detach().contiguous().clone()
        return config, state

    def inserted_modules(self) -> list[nn.Module]:
        return [m for _, A, B in self._pairs() for m in (A, B)]

    def extra_flops(self, batch: int, seq_len: int, *, train: bool, folded: bool) -> int:
        """B(A x) beside each adapted matrix at every position: 2n forward (n = r * (in + out));
        training adds A's and B's weight gradients (2n) and their input gradients (2n), except
        A's in layer 0 where it reads the layer's input (the frozen embeddings' output)."""
        layer0 = {id(m) for m in transformer_layers(self.model, self.anatomy.num_layers)[0].modules()}
        modules = dict(self.model.named_modules())
        n = frozen_input = 0
        for name, A, B in self._pairs():
            n += A.weight.numel() + B.weight.numel()
            if id(modules[name]) in layer0 and name.split(".")[-1] in LAYER_INPUT_PROJECTIONS:
                frozen_input += A.weight.numel()
        T = batch * seq_len
        fwd = 2 * n * T
        return fwd + 2 * n * T + 2 * (n - frozen_input) * T if train else fwd


@register_method("lora")
class Lora(Method[LoraConfig]):
    paper = "Hu et al., ICLR 2022, https://arxiv.org/abs/2106.09685"
    Config = LoraConfig
    uses_prefix_length = False
    default_lr = 1e-3
    identity_at_init = True
    peft_export_type = "LORA"

    def attach(self, model: nn.Module, ctx: AttachContext) -> PeftAdapter:
        import peft

        c = self.config
        targets = list(c.target_modules) if c.target_modules else default_targets(model, ctx.anatomy.model_type)
        config = peft.LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=targets)
        # inject in place: the model keeps its own class and forward signature
        peft.inject_adapter_in_model(config, model)
        return PeftAdapter(model, ctx.anatomy, config).to(ctx.device)

    def trainable_count(self, adapter: Adapter, anatomy: Anatomy) -> int:
        """r * (in + out) for each adapted linear layer (A: r x in, B: out x r)."""
        targets = self.config.target_modules or default_targets(adapter.model, anatomy.model_type)
        total = 0
        for name, module in adapter.model.named_modules():
            if name.split(".")[-1] in targets and hasattr(module, "weight"):
                fan_out, fan_in = module.weight.shape
                if type(module).__name__ == "Conv1D":  # GPT-2 stores (in, out)
                    fan_in, fan_out = fan_out, fan_in
                total += self.config.r * (fan_in + fan_out)
        return total
