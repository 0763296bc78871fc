"""The compatibility matrix (``bench/compat``) reports exactly what a method breaks: a test
plugin that breaks one feature fails that feature and passes (or is not applicable for) every
other; a pass that turns into a failure against the committed table exits 1 naming the cell;
a failure that was a failure before is data (exit 0); and the rendered tables hold every cell."""

from __future__ import annotations

import json
import sys

import pytest

from bench.compat import cli, runner
from bench.compat.architectures import ARCHITECTURES
from bench.compat.checks import FEATURE_NAMES, FEATURES, Subject
from bench.core.registry import import_plugins
from bench.report import compat_table
from methods import METHODS

PLUGIN = "compat_broken_plugin"


@pytest.fixture(scope="module")
def plugin():
    import_plugins([PLUGIN])
    module = sys.modules[PLUGIN]
    yield module
    for name in (module.FOLD, module.POSITIONS):
        METHODS._items.pop(name, None)
    sys.modules.pop(PLUGIN, None)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """As ``python -m bench.compat`` runs: tiny models on a shared machine are fastest on one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def statuses(doc: dict) -> dict[str, str]:
    return {c["feature"]: c["status"] for c in doc["cells"]}


@pytest.mark.parametrize("method,architecture,broken", [
    ("test_broken_fold", "llama-gqa", "fold"),
    ("test_broken_positions", "gpt2", "padding"),
])
def test_a_broken_method_fails_exactly_what_it_breaks(plugin, method: str, architecture: str, broken: str) -> None:
    doc = runner.run([architecture], [method])
    got = statuses(doc)
    assert set(got) == set(FEATURE_NAMES)
    failing = {f for f, s in got.items() if s == "fail"}
    details = {c["feature"]: c["detail"] for c in doc["cells"] if c["status"] == "fail"}
    assert failing == {broken}, details
    assert got["train"] == got["padding" if broken == "fold" else "fold"] == "pass"
    # the table shows it, with the error's first line
    md = compat_table.markdown_version(doc)
    assert f"| {method} | {architecture} |" in md
    assert details[broken].split(":")[0] in md


def run_cli(tmp_path, baseline: dict, *extra: str) -> int:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline))
    return cli.main(["--plugin", PLUGIN, "--method", "test_broken_fold", "--architecture", "llama-gqa",
                     "--feature", "fold", "--feature", "train", "--out", str(tmp_path / "out"),
                     "--baseline", str(path), *extra])


def baseline_with(fold_status: str) -> dict:
    cells = [{"method": "test_broken_fold", "architecture": "llama-gqa", "feature": f, "status": s,
              "detail": "", "seconds": 0.0} for f, s in (("fold", fold_status), ("train", "pass"))]
    return {"schema": compat_table.SCHEMA, "versions": {"transformers": "x", "torch": "x", "peft": "x", "python": "x"},
            "features": [], "methods": ["test_broken_fold"], "architectures": [], "cells": cells}


def test_a_pass_that_now_fails_is_a_regression(plugin, tmp_path, capsys) -> None:
    assert run_cli(tmp_path, baseline_with("pass")) == 1
    err = capsys.readouterr().err
    assert "REGRESSION: test_broken_fold × llama-gqa × fold: passed, now fails: folded vs unfolded" in err
    assert "train" not in err.split("REGRESSION")[1]  # only the regressed cell is named
    written = json.loads(next((tmp_path / "out").glob("transformers-*.json")).read_text())
    assert statuses(written) == {"fold": "fail", "train": "pass"}
    assert (tmp_path / "out" / "README.md").is_file() and (tmp_path / "out" / "index.html").is_file()


def test_a_known_failure_is_data_not_an_error(plugin, tmp_path) -> None:
    assert run_cli(tmp_path, baseline_with("fail"), "--no-write") == 0
    assert not (tmp_path / "out").exists()


def test_unknown_names_exit_2(capsys) -> None:
    assert cli.main(["--method", "lorra", "--no-write"]) == 2
    assert "unknown method 'lorra'" in capsys.readouterr().err


def test_a_partial_run_keeps_the_other_cells() -> None:
    old = baseline_with("fail")
    new = dict(old, cells=[dict(old["cells"][0], status="pass")])
    merged = compat_table.merge(old, new)
    assert statuses(merged) == {"fold": "pass", "train": "pass"} and merged["partial"]
    assert compat_table.changes(old, merged) == ["test_broken_fold × llama-gqa × fold: fail -> pass"]
    assert compat_table.regressions(old, merged) == []


# Cells that failed before the fixes the matrix led to (each is a claim of the committed table)
FIXED = [
    ("prefix_tuning", "llama-gqa", "checkpointing"),  # the prefix cache was dropped by checkpointed layers
    ("residual_prefix", "llama-gqa", "checkpointing"),  # the gates were lost in the checkpoint's replay
    ("p_tuning_v2", "qwen2", "bf16"),  # fp32 prefix keys in a bf16 model
    ("residual_prefix", "gemma2", "train"),  # forced SDPA, which Gemma 2 refuses (soft-capping)
    ("residual_prefix", "mistral-swa", "greedy"),  # sliding cache layers evicted the gated prefix
    ("prefix_tuning", "mistral-swa", "padding"),  # left padding pushed the prefix out of the window
    ("lora", "roberta", "identity"),  # positions from 0 instead of padding_idx + 1
    ("prefix_tuning", "roberta", "peft"),
    ("lora", "phi3", "train"),  # PEFT has no default LoRA targets for Phi-3
    ("prefix_tuning_plus", "phi3", "padding"),  # no hooks for fused qkv / GPT-NeoX / Qwen2 ...
    ("prefix_tuning_plus_lowrank", "gpt-neox", "train"),
]


@pytest.mark.parametrize("method,architecture,feature", FIXED)
def test_fixed_cells_pass(method: str, architecture: str, feature: str) -> None:
    arch = ARCHITECTURES[architecture]
    base, tokenizer = runner.build_base(arch)
    check = next(f for f in FEATURES if f.name == feature)
    cell = runner.run_cell(Subject(method, architecture, base, tokenizer, arch.causal), check)
    assert cell["status"] == "pass", cell["detail"]


def test_the_sliding_window_padding_check_catches_the_defect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without moving left padding behind the text, a prefix on a sliding-window model
    depends on the batch's padding, and the padding check says so."""
    import methods.kv_prefix

    monkeypatch.setattr(methods.kv_prefix, "has_sliding_window", lambda model: False)
    arch = ARCHITECTURES["mistral-swa"]
    base, tokenizer = runner.build_base(arch)
    check = next(f for f in FEATURES if f.name == "padding")
    cell = runner.run_cell(Subject("prefix_tuning", "mistral-swa", base, tokenizer, True), check)
    assert cell["status"] == "fail" and "alone vs padded batch" in cell["detail"]
