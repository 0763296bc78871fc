"""Method defaults per backbone from a committed search (bench/run/searched_lrs.py)."""

from __future__ import annotations

import pytest
from _records_fixture import record

import bench.run.searched_lrs as searched
from bench.cli import main
from bench.core.config import ConfigError
from bench.core.records import append_record
from bench.run.matrix import expand
from methods import METHODS


def chosen(method: str, task: str, lr: float, backbone: str = "minilm-l6", seed: int = 0, **kw):
    return record(method, 20 if method == "prefix_tuning" else None, seed, task=task, backbone=backbone,
                  cell_id=f"{method}-{task}-{backbone}-{seed}",
                  search={"grid": {"lr": [1e-4, 1e-3, 1e-2]}, "chosen": {"lr": lr}, "trials": 3}, **kw)


@pytest.fixture
def table(tmp_path, monkeypatch):
    path = tmp_path / "searched_lrs.toml"
    monkeypatch.setattr(searched, "SEARCHED_LRS", path)
    searched._load.cache_clear()
    yield path
    searched._load.cache_clear()


def test_the_rate_chosen_on_most_tasks_a_tie_the_smaller(table):
    recs = [chosen("prefix_tuning", "glue/sst2", 1e-3), chosen("prefix_tuning", "glue/rte", 1e-3),
            chosen("prefix_tuning", "glue/mrpc", 1e-2), chosen("lora", "glue/sst2", 1e-2),
            chosen("lora", "glue/rte", 1e-4), chosen("lora", "glue/rte", 1e-4, seed=1),
            # a trial row or a failed row chose nothing
            chosen("lora", "glue/cola", 1e-2, role="trial"), chosen("lora", "glue/mrpc", 1e-2, status="failed")]
    table.write_text(searched.render(recs, "fixture"))
    assert searched.searched_lr("minilm-l6", "prefix_tuning") == 1e-3
    assert searched.searched_lr("minilm-l6", "lora") == 1e-4  # one task each: the smaller
    assert searched.searched_lr("smollm2-135m", "lora") is None
    assert "# chose glue/mrpc: 0.01, glue/rte: 0.001, glue/sst2: 0.001" in table.read_text()


def test_a_suite_without_lr_takes_the_searched_rate_and_its_id_changes(table):
    doc = {"suites": {"s": {"methods": ["prefix_tuning", "lora"], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
                            "prefix_lengths": [2], "seeds": [0], "train": {"train_steps": 2}}}}
    before = {c.method: c for c in expand(doc, "s")}
    assert before["lora"].train["lr"] == METHODS.get("lora").default_lr
    table.write_text('["tiny-llama"]\nlora = 0.0005\n')
    searched._load.cache_clear()
    after = {c.method: c for c in expand(doc, "s")}
    assert after["lora"].train["lr"] == 5e-4 and after["lora"].id != before["lora"].id
    assert after["prefix_tuning"].id == before["prefix_tuning"].id  # no entry: its default, its id
    # a suite's own lr still wins
    doc["suites"]["s"]["overrides"] = {"lora": {"lr": 1e-2}}
    assert {c.method: c for c in expand(doc, "s")}["lora"].train["lr"] == 1e-2


@pytest.mark.parametrize("text, bad", [('["minilm-l6"]\nlora = -1\n', "minilm-l6.lora = -1"),
                                       ('["minilm-l6"]\nlora = "fast"\n', "minilm-l6.lora = 'fast'"),
                                       ('lora = 0.1\n', "[lora] must be a table")])
def test_a_bad_table_is_a_clear_error(table, text, bad):
    table.write_text(text)
    with pytest.raises(ConfigError, match=bad.replace("[", r"\[").replace("]", r"\]")):
        searched.searched_lr("minilm-l6", "lora")


def test_the_command_writes_the_table_from_a_records_folder(tmp_path, capsys):
    folder, out = tmp_path / "records", tmp_path / "lrs.toml"
    assert main(["searched-lrs", "--results", str(folder), "--out", str(out)]) == 2
    assert "holds no final row of a searched cell" in capsys.readouterr().err
    append_record(folder, chosen("lora", "glue/sst2", 3e-4, backbone="smollm2-135m"))
    assert main(["searched-lrs", "--results", str(folder), "--out", str(out)]) == 0
    assert searched.searched_lr("smollm2-135m", "lora", out) == 3e-4


def test_names_from_records_cannot_write_toml_of_their_own(table):
    recs = [chosen("lora", "glue/sst2", 1e-3, backbone='x"]\nlora = 1e9\n["y'),
            chosen("lora", "glue/sst2\n[evil]\nlora = 5", 2e-3)]
    text = searched.render(recs, "fixture")
    table.write_text(text)
    assert searched._load(table) == {("minilm-l6", "lora"): 2e-3}
    assert "[evil]" not in text.replace("# chose glue/sst2?[evil]?lora", "")
