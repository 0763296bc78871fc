"""Full fine-tuning: every weight trains. The upper reference for accuracy and the lower
one for memory and adapter size (the "adapter" is the whole model)."""

from __future__ import annotations

from torch import nn

from methods.base import Adapter, Anatomy, AttachContext, Method, MethodConfig, register_method


@register_method("full_finetune")
class FullFinetune(Method[MethodConfig]):
    paper = "reference: all parameters trained (e.g. Howard & Ruder 2018; Devlin et al. 2019)"
    uses_prefix_length = False
    default_lr = 2e-5
    identity_at_init = True

    def attach(self, model: nn.Module, ctx: AttachContext) -> Adapter:
        for p in model.parameters():
            p.requires_grad_(True)
        return Adapter(model)

    def trainable_count(self, adapter: Adapter, anatomy: Anatomy) -> int:
        """Every parameter (tied weights counted once)."""
        return sum(p.numel() for p in adapter.model.parameters())
