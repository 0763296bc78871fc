"""Cell identity: the id covers the code and declarations that decide a cell's result
(method and task versions, prompt, label words, plugin and harness source), so a change
makes new cells; ``run`` re-runs stale rows and says so instead of skipping them."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from bench.core import identity
from bench.core.identity import identity_changes, source_digest, source_modules
from bench.core.records import read_records
from bench.run import data as run_data
from bench.run.driver import run_cells
from bench.run.matrix import expand
from methods import METHODS
from tasks import TASKS

DOC = {"suites": {"t": {
    "methods": ["prefix_tuning", "lora"], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
    "prefix_lengths": [2], "seeds": [0],
    "train": {"train_steps": 2, "batch_size": 4, "eval_limit": 8, "train_limit": 16, "max_length": 32}}}}


def ids() -> dict[str, str]:
    return {c.method: c.id for c in expand(DOC, "t")}


@pytest.mark.parametrize("attr, value", [
    ("prompt", "Text: {text_a}\nFeeling:"),
    ("label_words", (" bad", " good")),
    ("version", "2"),
])
def test_a_task_declaration_change_makes_new_cells(attr, value, monkeypatch):
    before = ids()
    monkeypatch.setattr(TASKS.get("glue/sst2"), attr, value)
    after = ids()
    assert all(before[m] != after[m] for m in before), f"changing the task's {attr} kept old ids"


def test_a_method_version_or_source_change_makes_new_cells_of_that_method_only(monkeypatch):
    before = ids()
    monkeypatch.setattr(METHODS.get("prefix_tuning"), "version", "2")
    after = ids()
    assert after["prefix_tuning"] != before["prefix_tuning"] and after["lora"] == before["lora"]
    monkeypatch.undo()
    # an edit of the shared prefix machinery re-runs prefix methods, and nothing else
    real = identity._module_source
    monkeypatch.setattr(identity, "_module_source",
                        lambda m: real(m) + (b"# edited" if m.__name__ == "methods.kv_prefix" else b""))
    edited = ids()
    assert edited["prefix_tuning"] != before["prefix_tuning"] and edited["lora"] == before["lora"]


def test_a_harness_change_makes_new_cells_of_every_method(monkeypatch):
    before = ids()
    real = identity._module_source
    monkeypatch.setattr(identity, "_module_source",
                        lambda m: real(m) + (b"# loss" if m.__name__ == "bench.run.formulations" else b""))
    after = ids()
    assert all(before[m] != after[m] for m in before)


def test_source_modules_follow_base_classes_within_plugin_packages():
    def names(obj):
        return {m.__name__ for m in source_modules(obj)}

    assert names(METHODS.get("prefix_tuning")) == {"methods.base", "methods.kv_prefix", "methods.prefix_tuning"}
    assert {"methods.prefix_tuning", "methods.kv_prefix"} <= names(METHODS.get("residual_prefix"))
    assert names(METHODS.get("lora")) == {"methods.base", "methods.lora"}  # no torch, peft or bench modules
    assert names(TASKS.get("glue/sst2")) == {"tasks.base", "tasks.glue", "tasks.metrics"}
    assert source_digest(METHODS.get("p_tuning_v2")) != source_digest(METHODS.get("prefix_tuning"))


def test_identity_changes_say_what_changed():
    old = {"method": {"version": "1", "source": "a"}, "task": {"version": "1", "source": "b"}, "harness": "h"}
    new = copy.deepcopy(old)
    new["method"]["source"] = "c"
    new["task"]["version"] = "2"
    assert identity_changes(old, new) == ["method source", "task version 1 -> 2"]
    assert identity_changes({}, new) == ["recorded before cell ids covered code (schema 1)"]


def test_run_reruns_cells_whose_code_or_prompt_changed(tmp_path, data, monkeypatch):
    logs: list[str] = []
    assert run_cells(expand(DOC, "t"), tmp_path, data, torch.device("cpu"), log=logs.append)["ran"] == 2
    # the prefix method's code changes: its row is stale and re-runs; LoRA's stands
    real = identity.source_digest
    monkeypatch.setattr(identity, "source_digest",
                        lambda obj: real(obj) + ("+" if obj is METHODS.get("prefix_tuning") else ""))
    logs.clear()
    counts = run_cells(expand(DOC, "t"), tmp_path, data, torch.device("cpu"), log=logs.append)
    assert (counts["ran"], counts["skipped"]) == (1, 1)
    assert any(line.startswith("1 stale row(s)") and "code changed: method source: 1" in line for line in logs), logs
    records = read_records(tmp_path)[0]
    assert [r.method for r in records] == ["prefix_tuning", "lora", "prefix_tuning"]
    assert records[-1].config["identity"]["method"]["source"].endswith("+")
    # a prompt change makes both stale
    monkeypatch.setattr(TASKS.get("glue/sst2"), "prompt", "Text: {text_a}\nFeeling:")
    logs.clear()
    counts = run_cells(expand(DOC, "t"), tmp_path, data, torch.device("cpu"), log=logs.append)
    assert counts["ran"] == 2
    assert any(line.startswith("2 stale row(s)") and "task declaration: 2" in line for line in logs), logs
    # once re-run, the superseded rows are not reported again
    logs.clear()
    counts = run_cells(expand(DOC, "t"), tmp_path, data, torch.device("cpu"), log=logs.append)
    assert counts["ran"] == 0 and not any("stale" in line for line in logs)


def test_run_reruns_a_cell_whose_data_changed(tmp_path, data, monkeypatch):
    folder = tmp_path / "data" / "glue" / "sst2"
    folder.mkdir(parents=True)
    dev = data.data_dir / "glue" / "sst2" / "dev.tsv"
    for name in ("train.tsv", "dev.tsv"):
        shutil.copy(dev, folder / name)
    local = type(data)(data_dir=tmp_path / "data", allow_hub=False)
    doc = copy.deepcopy(DOC)
    doc["suites"]["t"]["methods"] = ["lora"]
    cells = expand(doc, "t")
    monkeypatch.setattr(run_data, "_SPLITS", {})
    assert run_cells(cells, tmp_path / "r", local, torch.device("cpu"), log=lambda s: None)["ran"] == 1
    lines = (folder / "train.tsv").read_text().splitlines()
    (folder / "train.tsv").write_text("\n".join(lines[:-1]) + "\n")  # one training row fewer
    monkeypatch.setattr(run_data, "_SPLITS", {})  # a new process would read the file afresh
    logs: list[str] = []
    counts = run_cells(cells, tmp_path / "r", local, torch.device("cpu"), log=logs.append)
    assert counts["ran"] == 1
    assert any(line.startswith("1 stale row(s)") and "data changed: 1" in line for line in logs), logs
    first, second = read_records(tmp_path / "r")[0]
    assert first.cell_id == second.cell_id and first.data_fingerprint != second.data_fingerprint


def test_a_cell_planned_with_other_code_fails_instead_of_claiming_it(tmp_path, data, monkeypatch):
    """A queued worker that starts after an edit must not write a row under the old identity."""
    doc = copy.deepcopy(DOC)
    doc["suites"]["t"]["methods"] = ["lora"]
    cells = expand(doc, "t")
    monkeypatch.setattr(METHODS.get("lora"), "version", "2")
    run_cells(cells, tmp_path, data, torch.device("cpu"), log=lambda s: None)
    (row,) = read_records(tmp_path)[0]
    assert row.status == "failed" and "code changed since this cell was planned (method version 1 -> 2)" in row.error
