"""Prompt tuning: Lester, Al-Rfou & Constant, "The Power of Scale for Parameter-Efficient
Prompt Tuning", EMNLP 2021 (https://aclanthology.org/2021.emnlp-main.243).

P trainable vectors prepended to the input embeddings (layer 0 only), initialised from
vocabulary embeddings (sampled frequent tokens, or a given text's tokens); random init is
available but trains much worse, as the paper reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.core.config import ConfigError
from methods.base import (
    Adapter,
    Anatomy,
    AttachContext,
    Method,
    MethodConfig,
    register_method,
    with_positions,
)
from methods.kv_prefix import init_token_ids

INITS = ("vocab", "text", "random")


@dataclass(frozen=True)
class PromptTuningConfig(MethodConfig):
    init: str = field(default="vocab", metadata={
        "help": "vocab: embeddings of sampled frequent tokens; text: of init_text; random: N(0, init_std)"})
    init_text: str = field(default="Classify the sentiment of the following text.", metadata={
        "help": "text whose token embeddings initialise the prompt when init = 'text'"})
    init_std: float = field(default=0.02, metadata={"help": "std of the random init"})

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"init {self.init!r} is not one of {', '.join(INITS)}")


def next_to_text(attention_mask: torch.Tensor, P: int) -> torch.Tensor:
    """Gather index that turns rows of [prompt(P), padding(k), text] into
    [padding(k), prompt(P), text], k being each row's count of leading padding (0 for
    right-padded rows, which are left as they are)."""
    batch, n = attention_mask.shape
    lead = torch.where(attention_mask.bool().any(1), attention_mask.long().argmax(1),
                       torch.zeros(batch, dtype=torch.long, device=attention_mask.device)).unsqueeze(1)
    j = torch.arange(P + n, device=attention_mask.device).unsqueeze(0)
    return torch.where(j < lead, j + P, torch.where(j < lead + P, j - lead, j))


def extend(model: nn.Module, prompt: torch.Tensor, shown: torch.Tensor | None, input_ids: torch.Tensor,
           attention_mask: torch.Tensor | None, kwargs: dict[str, Any], positions: bool) -> dict[str, Any]:
    """``model``'s inputs with ``prompt`` (batch, P, d) placed right before each row's first
    real token; ``shown`` (batch, P) masks prompt slots out (None: every slot is real)."""
    batch, P = input_ids.shape[0], prompt.shape[1]
    embeds = model.get_input_embeddings()(input_ids)
    prompt = prompt.to(embeds.dtype)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    ones = torch.ones(batch, P, dtype=attention_mask.dtype, device=attention_mask.device)
    prompt_mask = ones if shown is None else shown.to(attention_mask.dtype)
    order = next_to_text(attention_mask, P)
    out = dict(kwargs, inputs_embeds=torch.cat([prompt, embeds], 1).gather(
                   1, order.unsqueeze(-1).expand(-1, -1, embeds.shape[-1])),
               attention_mask=torch.cat([prompt_mask, attention_mask], 1).gather(1, order))
    if kwargs.get("token_type_ids") is not None:
        tt = kwargs["token_type_ids"]
        out["token_type_ids"] = torch.cat([torch.zeros_like(ones, dtype=tt.dtype), tt], 1).gather(1, order)
    if kwargs.get("position_ids") is not None:
        raise ValueError("prompt_tuning derives positions from the attention mask; got position_ids")
    return with_positions(model, out) if positions else out


class SoftPromptAdapter(Adapter):
    def __init__(self, model: nn.Module, ctx: AttachContext, P: int, config: PromptTuningConfig) -> None:
        super().__init__(model)
        emb = model.get_input_embeddings().weight
        if config.init == "random":
            g = torch.Generator().manual_seed(ctx.seed)
            init = torch.randn(P, emb.shape[1], generator=g) * config.init_std
        else:
            init = emb[init_token_ids(ctx, P, config.init, config.init_text, model)].detach().float().clone()
        self.prompt = nn.Parameter(init)

    @property
    def extra_positions(self) -> int:
        return self.prompt.shape[0]

    def _extend(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                kwargs: dict[str, Any], positions: bool = True) -> dict[str, Any]:
        """Embeddings with the prompt placed right before each row's first real token.

        In front of the whole row, a left-padded row's prompt would sit before its padding;
        next to the text, the row reads the same in any batch (with positions from the mask).
        ``positions=False`` leaves them to ``generate``, which derives them from the mask."""
        prompt = self.prompt.unsqueeze(0).expand(input_ids.shape[0], -1, -1)
        return extend(self.model, prompt, None, input_ids, attention_mask, kwargs, positions)

    @classmethod
    def packed_forward(cls, adapters: Sequence[SoftPromptAdapter], rows: Sequence[int],
                       input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                       **kwargs: Any) -> Any:
        """Each row with its own adapter's prompt, through ``adapters[0]``'s backbone. A prompt
        shorter than the longest (P) is followed by slots the attention mask hides, so its
        first vector stays first (an encoder's head reads position 0) and the text's
        positions, counted over unmasked tokens, start after the row's own P_k."""
        P = max(a.prompt.shape[0] for a in adapters)
        prompt = torch.cat([nn.functional.pad(a.prompt, (0, 0, 0, P - a.prompt.shape[0])).unsqueeze(0).expand(n, -1, -1)
                            for a, n in zip(adapters, rows, strict=True)])
        shown = torch.cat([(torch.arange(P, device=input_ids.device) < a.prompt.shape[0]).unsqueeze(0).expand(n, -1)
                           for a, n in zip(adapters, rows, strict=True)])
        model = adapters[0].model
        return model(**extend(model, prompt, shown, input_ids, attention_mask, kwargs, True))

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        return self.model(**self._extend(input_ids, attention_mask, kwargs))

    def peft_export(self, task_type: str) -> tuple[Any, dict[str, torch.Tensor]]:
        """PEFT's prompt tuning: its prompt embedding is our prompt. PEFT puts the prompt in
        front of the whole row, so a left-padded row differs (we put it next to the text)."""
        import peft

        config = peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=self.prompt.shape[0])
        return config, {"prompt_embeddings": self.prompt.detach().float().contiguous().clone()}

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        # with inputs_embeds only, generate returns just the new tokens; put the prompt back
        out = self.model.generate(**self._extend(input_ids, attention_mask, kwargs, positions=False))
        new = out.sequences if hasattr(out, "sequences") else out  # return_dict_in_generate
        # beam search may return several sequences per prompt
        prompts = input_ids.repeat_interleave(new.shape[0] // input_ids.shape[0], dim=0)
        if hasattr(out, "sequences"):
            out.sequences = torch.cat([prompts, new], 1)
            return out
        return torch.cat([prompts, new], 1)


@register_method("prompt_tuning")
class PromptTuning(Method[PromptTuningConfig]):
    paper = "Lester et al., EMNLP 2021, https://aclanthology.org/2021.emnlp-main.243"
    Config = PromptTuningConfig
    default_lr = 3e-2
    peft_export_type = "PROMPT_TUNING"
    packable = True  # SoftPromptAdapter.packed_forward: one prompt per row

    def attach(self, model: nn.Module, ctx: AttachContext) -> SoftPromptAdapter:
        return SoftPromptAdapter(model, ctx, self.prefix_length, self.config).to(ctx.device)

    def trainable_count(self, adapter: Adapter, anatomy: Anatomy) -> int:
        """P * d: one embedding-sized vector per prompt token."""
        return self.prefix_length * adapter.model.get_input_embeddings().weight.shape[1]
