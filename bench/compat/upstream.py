"""Known causes of failing cells: each rule matches a failing cell and says whose the cause
is -- transformers' or PEFT's (with the upstream issue where one is known), or ours and not
fixed yet (with why). Rules are checked in order; the first that matches names the cause.
A failure no rule names is new: find its cause, then fix it or add a rule."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Upstream:  # a known cause (the name is historical: ours can be here too)
    feature: str  # the column ("*": any)
    detail: str  # regex searched in the cell's error text
    note: str  # what the cell says: whose bug, and the issue if known
    methods: str = ".*"  # regex over method names
    architectures: str = ".*"  # regex over architecture names


KV_PREFIX = "prefix_tuning|p_tuning_v2|residual_prefix"
RULES: tuple[Upstream, ...] = (
    Upstream("checkpointing", r"does not require grad",
             "transformers 4.x: gradient_checkpointing_enable() defaults to use_reentrant=True, and with frozen "
             "embeddings no checkpointed layer's input requires grad, so nothing inside the layers gets a gradient "
             "(call model.enable_input_require_grads() or pass gradient_checkpointing_kwargs="
             "{'use_reentrant': False}; transformers 5 defaults to the latter)"),
    Upstream("checkpointing", r"size of tensor|gradient lost",
             "transformers: GPT2Model passes its blocks no cache under gradient checkpointing "
             "(modeling_gpt2.py, `past_key_values if not (self.gradient_checkpointing and self.training)`), "
             "so the prefix is dropped; our read-only prefix cache is kept by every model that leaves it to "
             "the layers (`_can_checkpoint_with_cache`). See https://github.com/huggingface/peft/issues/869",
             methods=KV_PREFIX, architectures="gpt2"),
    Upstream("checkpointing", r"size of tensor|gradient lost",
             "transformers: checkpointed layers drop `past_key_values` (this release has no "
             "`_can_checkpoint_with_cache` for layers that only read the cache), and with it the prefix. "
             "See https://github.com/huggingface/peft/issues/869",
             methods=KV_PREFIX),
    Upstream("attention", r"SDPA vs eager",
             "transformers: SDPA has no attention soft-capping, and this release runs Gemma 2 on SDPA anyway "
             "(only its eager attention caps; 5.23 refuses SDPA for Gemma 2). See "
             "https://github.com/huggingface/transformers/pull/31887",
             architectures="gemma2"),
    Upstream("peft", r"does not support past key values",
             "PEFT 0.21.2: its check for cache support rejects this release's BERT/RoBERTa for prefix tuning "
             "(our own prefix reaches them through the cache); the same check broke on an earlier transformers "
             "change, https://github.com/huggingface/peft/pull/2662"),
    Upstream("*", r"unexpected keyword argument 'past_key_values'",
             "transformers 4.x: BERT/RoBERTa sequence classifiers take no past_key_values, so a prefix carried "
             "in the cache cannot reach them (PEFT's prefix tuning has the same limit there)"),
    Upstream("*", r"dispatches attention through transformers' AttentionInterface",
             "transformers 4.x: BERT-family attention predates AttentionInterface, so residual_prefix's gates "
             "have no way into it", methods="residual_prefix"),
    Upstream("bf16", r"bf16 vs fp32",
             "ours, open, cause not established: with prefix_tuning's default prefix (a random MLP over word "
             "embeddings) SmolLM2 drifts ~12x the backbone's own bf16 error under transformers 5.x but not "
             "under 4.57.6, and its fp32 padding error is 30x the other methods' (ill-conditioned attention to "
             "keys unlike the model's own?); p_tuning_v2, whose prefix is real tokens' activations, stays at "
             "the backbone's own error",
             methods="prefix_tuning", architectures="smollm2-135m"),
)


def upstream_note(method: str, architecture: str, feature: str, detail: str) -> str | None:
    for rule in RULES:
        if (rule.feature in ("*", feature) and re.fullmatch(rule.methods, method)
                and re.fullmatch(rule.architectures, architecture) and re.search(rule.detail, detail)):
            return rule.note
    return None
