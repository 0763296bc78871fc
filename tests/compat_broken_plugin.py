"""Test-only method plugins that each break exactly one feature of the compatibility matrix
(``tests/test_compat.py``): the matrix must report that feature failing and every other
passing or not applicable. Never registered by the package: tests import it, and unregister
it afterwards.

* ``test_broken_fold``: prefix tuning whose ``fold()`` shifts the folded prefix, so folded
  evaluation differs from unfolded (generation and save/load fold both sides alike and stay
  consistent).
* ``test_broken_positions``: a zero-initialised embedding shift whose forward ignores the
  attention mask's positions (the backbone's ``arange`` counts left padding), which an
  absolute-position backbone (GPT-2) shows as padding dependence.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from methods.base import Adapter, AttachContext, Method, MethodConfig, register_method
from methods.prefix_tuning import PrefixTuning, PrefixTuningAdapter

FOLD, POSITIONS = "test_broken_fold", "test_broken_positions"


class BrokenFoldAdapter(PrefixTuningAdapter):
    @torch.no_grad()
    def fold(self) -> None:
        if not self._deployed:  # a deployed prefix is the folded one already: kept as loaded
            super().fold()
            self._folded = self._folded + 0.5


@register_method(FOLD)
class BrokenFold(PrefixTuning):
    paper = "none: a test fixture"

    def attach(self, model: nn.Module, ctx: AttachContext) -> BrokenFoldAdapter:
        return BrokenFoldAdapter(model, ctx, self.prefix_length, self.config).to(ctx.device)


class ArangeAdapter(Adapter):
    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.shift = nn.Parameter(torch.zeros(model.get_input_embeddings().weight.shape[1]))

    def forward(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        embeds = self.model.get_input_embeddings()(input_ids)
        return self.model(inputs_embeds=embeds + self.shift.to(embeds.dtype), **kwargs)  # no position_ids


@register_method(POSITIONS)
class BrokenPositions(Method[MethodConfig]):
    paper = "none: a test fixture"
    uses_prefix_length = False
    identity_at_init = True

    def attach(self, model: nn.Module, ctx: AttachContext) -> ArangeAdapter:
        return ArangeAdapter(model)
