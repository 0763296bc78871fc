"""The architectures of the compatibility matrix: tiny random configs built from transformers'
own config classes (no hub), and the real registered backbones where their packages are
installed.

Adding a family is adding a row to ``TINY``: the config class's name (looked up in the
installed transformers, so a family missing from an older release is reported, not fatal)
and the few options that make it tiny and make it exercise what it is here for. Every tiny
model reuses MiniLM's WordPiece vocabulary (30522 ids), two layers and width 32, with every
dropout at 0 so that gradients compare exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

VOCAB = 30522  # MiniLM's WordPiece tokenizer, reused by every tiny model
# Small enough that the window bites on the checks' inputs (up to 7 tokens after a prefix of 4):
# a prefix that sliding-window layers silently drop or mis-place shows up.
SLIDING_WINDOW = 6
NO_DROPOUT = {"attention_dropout": 0.0, "hidden_dropout": 0.0}


@dataclass(frozen=True)
class Architecture:
    """One row group of the matrix: a tiny config or a registered real backbone."""

    name: str
    causal: bool
    note: str  # what this architecture exercises
    config_class: str | None = None  # transformers config class for a tiny random model
    options: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None  # a registered backbone (bench.run.backbones) instead

    @property
    def is_real(self) -> bool:
        return self.backbone is not None

    def make_config(self) -> Any:
        """The tiny config; AttributeError naming the class when this transformers has none."""
        import transformers

        cls = getattr(transformers, self.config_class or "", None)
        if cls is None:
            raise AttributeError(f"transformers {transformers.__version__} has no {self.config_class}")
        return cls(**copy.deepcopy(self.options))


def _decoder(**options: Any) -> dict[str, Any]:
    """Options every tiny decoder shares (LLaMA-style names)."""
    base = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 256, "pad_token_id": 0,
            "bos_token_id": 101, "eos_token_id": 102, "attention_dropout": 0.0}
    return {**base, **options}


def _encoder(**options: Any) -> dict[str, Any]:
    base = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 256, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}
    return {**base, **options}


TINY: tuple[Architecture, ...] = (
    Architecture("llama-gqa", True, "LLaMA, grouped-query attention (4 query / 2 key-value heads), rotary",
                 "LlamaConfig", _decoder(num_key_value_heads=2, tie_word_embeddings=True)),
    Architecture("qwen2", True, "Qwen2: GQA, biased q/k/v projections, rotary",
                 "Qwen2Config", _decoder(num_key_value_heads=2, tie_word_embeddings=True)),
    Architecture("mistral-swa", True, f"Mistral: GQA, sliding-window attention (window {SLIDING_WINDOW})",
                 "MistralConfig", _decoder(num_key_value_heads=2, sliding_window=SLIDING_WINDOW)),
    # caps small enough to bite on a tiny random model's attention scores (~0.1) and logits (~1):
    # at Gemma 2's own 50 and 30 they would change nothing, and a kernel that skips them would pass
    Architecture("gemma2", True, f"Gemma 2: alternating local (window {SLIDING_WINDOW}) / global layers, "
                 "attention (cap 0.2) and final logit (cap 1) soft-capping, GQA",
                 "Gemma2Config", _decoder(num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                                          sliding_window=SLIDING_WINDOW, attn_logit_softcapping=0.2,
                                          final_logit_softcapping=1.0,
                                          layer_types=["sliding_attention", "full_attention"])),
    Architecture("phi3", True, "Phi-3: fused qkv projection, GQA, rotary",
                 "Phi3Config", _decoder(num_key_value_heads=2, resid_pdrop=0.0, embd_pdrop=0.0)),
    Architecture("gpt-neox", True, "GPT-NeoX: fused per-head interleaved qkv, partial rotary, parallel residual",
                 "GPTNeoXConfig", _decoder(hidden_dropout=0.0, classifier_dropout=0.0,
                                           tie_word_embeddings=False)),
    Architecture("gpt2", True, "GPT-2: absolute position embeddings, fused Conv1D c_attn",
                 "GPT2Config", {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256,
                                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                                "bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0}),
    Architecture("bert", False, "BERT encoder, absolute positions, sequence classification",
                 "BertConfig", _encoder(pad_token_id=0)),
    Architecture("roberta", False, "RoBERTa encoder: positions offset past the padding index (pad id 1)",
                 "RobertaConfig", _encoder(pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                           max_position_embeddings=258)),
)

REAL: tuple[Architecture, ...] = (
    Architecture("smollm2-135m", True, "real SmolLM2-135M-Instruct (LLaMA, 9q/3kv heads, 30 layers)",
                 backbone="smollm2-135m"),
    Architecture("minilm-l6", False, "real all-MiniLM-L6-v2 (BERT, 6 layers)", backbone="minilm-l6"),
)

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in TINY + REAL}


def real_available(arch: Architecture) -> str | None:
    """None when a real backbone's offline package is installed; else why it is skipped."""
    from bench.run.backbones import BACKBONES, _package_dir

    backbone = BACKBONES.get(arch.backbone)
    if backbone.offline_package and _package_dir(backbone.offline_package) is None:
        return f"its package ({backbone.offline_package}) is not installed"
    return None
