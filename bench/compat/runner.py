"""Run the matrix: every method on every architecture, every feature check isolated (an
exception in one is that cell's failure, never the run's), one model per architecture shared
by all methods. The result is plain data (``bench.report.compat_table`` renders it)."""

from __future__ import annotations

import gc
import platform
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from bench.compat.architectures import ARCHITECTURES, Architecture, real_available
from bench.compat.checks import _DEPTH, FEATURES, Feature, NotApplicable, Subject, first_line, zero_dropout
from bench.compat.upstream import upstream_note
from bench.report.compat_table import SCHEMA

PASS, FAIL, NA = "pass", "fail", "n/a"


class _Tokenizer:
    """Stands in for MiniLM's tokenizer when its package is absent: what methods read while
    attaching (the special ids to avoid when sampling init tokens)."""

    all_special_ids = [0, 100, 101, 102, 103]
    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [1996 + (sum(map(ord, w)) % 1000) for w in text.split()]}


def build_base(arch: Architecture) -> tuple[torch.nn.Module, Any]:
    """The frozen eval-mode model (random tiny, or the registered real backbone) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if arch.is_real:
        from bench.run.backbones import load_backbone

        loaded = load_backbone(arch.backbone, "causal_lm" if arch.causal else "seq_cls")
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        from bench.run.backbones import minilm_dir

        config = arch.make_config()
        torch.manual_seed(0)  # the same tiny model in every run
        if arch.causal:
            model = AutoModelForCausalLM.from_config(config)
        else:
            config.num_labels = 2
            model = AutoModelForSequenceClassification.from_config(config)
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = 0
        tok_dir = minilm_dir()
        if tok_dir is not None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        else:
            tokenizer = _Tokenizer()
    model.eval()
    zero_dropout(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def run_cell(subject: Subject, feature: Feature) -> dict[str, Any]:
    start = time.perf_counter()
    depth = _DEPTH.set(subject.base.config.get_text_config().num_hidden_layers)
    try:
        with torch.enable_grad():
            detail = feature.check(subject)
        status = PASS
    except NotApplicable as err:
        status, detail = NA, str(err)
    except Exception as err:  # the cell's failure, never the run's
        status = FAIL
        detail = first_line(err) if type(err).__name__ == "CheckFailed" else f"{type(err).__name__}: {first_line(err)}"
    finally:
        _DEPTH.reset(depth)
    cell = {"method": subject.method, "architecture": subject.architecture, "feature": feature.name,
            "status": status, "detail": detail, "seconds": round(time.perf_counter() - start, 3)}
    if status == FAIL:
        note = upstream_note(subject.method, subject.architecture, feature.name, detail)
        if note:
            cell["note"] = note
    return cell


def versions() -> dict[str, str]:
    import peft
    import transformers

    return {"transformers": transformers.__version__, "torch": torch.__version__, "peft": peft.__version__,
            "python": platform.python_version()}


def run(architectures: list[str], methods: list[str], features: list[str] | None = None,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The results document: versions, the axes and one entry per cell."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations say nothing about a cell
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    chosen = [f for f in FEATURES if features is None or f.name in features]
    say = progress or (lambda line: None)
    cells: list[dict[str, Any]] = []
    archs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    start = time.perf_counter()
    for name in architectures:
        arch = ARCHITECTURES[name]
        if arch.is_real and (why := real_available(arch)):
            skipped[name] = why
            say(f"{name}: skipped, {why}")
            continue
        archs.append({"name": name, "causal": arch.causal, "note": arch.note,
                      "source": arch.backbone or f"random {arch.config_class}"})
        t0 = time.perf_counter()
        try:
            base, tokenizer = build_base(arch)
        except Exception as err:  # e.g. a config class this transformers does not have
            status = NA if isinstance(err, AttributeError) else FAIL
            detail = f"{type(err).__name__}: {first_line(err)}" if status == FAIL else first_line(err)
            cells += [{"method": m, "architecture": name, "feature": f.name, "status": status,
                       "detail": detail, "seconds": 0.0} for m in methods for f in chosen]
            say(f"{name}: {status}: {detail}")
            continue
        for method in methods:
            subject = Subject(method, name, base, tokenizer, arch.causal)
            row = [run_cell(subject, f) for f in chosen]
            cells += row
            marks = " ".join(f"{c['feature']}:{'ok' if c['status'] == PASS else c['status']}" for c in row)
            say(f"{name} × {method}: {marks}")
            del subject
            gc.collect()
        say(f"{name}: {time.perf_counter() - t0:.0f} s")
        del base
        gc.collect()
    return {"schema": SCHEMA, "versions": versions(), "seconds": round(time.perf_counter() - start, 1),
            "threads": torch.get_num_threads(), "argv": sys.argv[1:],
            "features": [{"name": f.name, "title": f.title, "doc": " ".join((f.check.__doc__ or "").split())}
                         for f in chosen],
            "methods": list(methods), "architectures": archs, "skipped": skipped, "cells": cells}
