"""End to end on a random tiny model: plumbing, resume, isolation of the shared backbone."""

from __future__ import annotations

import json

import pytest
import torch

from bench.core.record_schema import SCHEMA_VERSION
from bench.core.records import read_records
from bench.run import backbones
from bench.run.driver import run_cells
from bench.run.matrix import expand

TINY = {
    "suites": {
        "t": {
            "methods": ["prefix_tuning", "prompt_tuning", "lora"],
            "tasks": ["glue/sst2"],
            "backbones": ["tiny-llama"],
            "prefix_lengths": [2],
            "seeds": [0],
            "train": {"train_steps": 3, "batch_size": 4, "eval_limit": 16, "train_limit": 64,
                      "max_length": 32},
        }
    }
}


def test_matrix_runs_records_and_resumes(tmp_path, data):
    cells = expand(TINY, "t")
    logs: list[str] = []
    counts = run_cells(cells, tmp_path, data, torch.device("cpu"), log=logs.append)
    assert counts["ran"] == 3 and counts["failed"] == 0
    records, problems = read_records(tmp_path)
    assert not problems and len(records) == 3
    for r in records:
        assert r.status == "ok", r.error
        # the runner pins this process's threads into the id; the row's kernels record them
        threads = torch.get_num_threads()
        assert r.kernels["threads"] == str(threads) and r.kernels["deterministic_algorithms"] == "false"
        assert r.schema_version == SCHEMA_VERSION
        assert r.cell_id in {c.pinned(threads, False, "random-init").id for c in cells}
        assert 0.0 <= r.main_score <= 1.0 and r.metrics["accuracy"] == r.main_score
        assert r.trainable_params > 0 and r.total_params > r.trainable_params
        assert r.adapter_bytes > 0 and r.train_tokens_per_s > 0 and r.eval_tokens_per_s > 0
        assert r.peak_memory_bytes > 0 and r.data_source.startswith("train=local:")
        assert r.config["method"] == r.method and r.versions["torch"].startswith("2.13")
        curves = json.loads(open(r.curve_path).read())
        assert len(curves["loss"]) == 3
    # a re-run finds every cell finished and trains nothing
    again = run_cells(cells, tmp_path, data, torch.device("cpu"), log=logs.append)
    assert again["ran"] == 0 and again["skipped"] == 3
    assert len(read_records(tmp_path)[0]) == 3


def test_shared_backbone_weights_untouched_between_cells(tmp_path, data):
    doc = json.loads(json.dumps(TINY))
    doc["suites"]["t"]["methods"] = ["full_finetune", "lora", "prefix_tuning"]
    cells = expand(doc, "t")
    head = "causal_lm"
    base = backbones.load_backbone("tiny-llama", head, 2, "auto", "cpu").model
    before = {k: v.clone() for k, v in base.state_dict().items()}
    counts = run_cells(cells, tmp_path, data, torch.device("cpu"), log=lambda s: None)
    assert counts["failed"] == 0
    after = base.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed in the shared backbone"
    # full fine-tuning really changed its own copy (the adapter is the whole model)
    rec = next(r for r in read_records(tmp_path)[0] if r.method == "full_finetune")
    assert rec.trainable_params == rec.total_params


def test_failed_cell_is_recorded_and_matrix_continues(tmp_path, data):
    doc = json.loads(json.dumps(TINY))
    doc["suites"]["t"]["overrides"] = {"prompt_tuning": {"lr": 1e30}}
    cells = expand(doc, "t")
    counts = run_cells(cells, tmp_path, data, torch.device("cpu"), log=lambda s: None)
    records = {r.method: r for r in read_records(tmp_path)[0]}
    assert counts["ran"] == 3
    assert records["prefix_tuning"].status == "ok" and records["lora"].status == "ok"
    if records["prompt_tuning"].status == "failed":  # lr 1e30 drives the loss non-finite
        assert "non-finite" in records["prompt_tuning"].error


def test_cli_rejects_unknown_names_before_loading(tmp_path, monkeypatch, capsys):
    from bench import cli

    def boom(*a, **k):
        raise AssertionError("a model was loaded before validation")

    monkeypatch.setattr(backbones, "load_backbone", boom)
    monkeypatch.setattr("bench.run.cell.load_backbone", boom)
    bad = tmp_path / "bad.toml"
    bad.write_text('[suites.x]\nmethods=["prefix_tuning","nope"]\ntasks=["glue/sst2"]\n'
                   'backbones=["tiny-llama"]\nprefix_lengths=[2]\nseeds=[0]\n')
    assert cli.main(["run", "--config", str(bad), "--suite", "x", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "prefix_tuning" in err and "lora" in err
    bad.write_text('[suites.x]\nmethods=["lora"]\ntasks=["glue/sst2"]\nbackbones=["tiny-llama"]\n'
                   'prefix_lengths=[2]\nseeds=[0]\nsteps=3\n')
    assert cli.main(["run", "--config", str(bad), "--suite", "x"]) == 2
    assert "unknown key(s) 'steps'" in capsys.readouterr().err
    assert cli.main(["run", "--suite", "default", "--backbone", "gpt7", "--dry-run"]) == 2
    assert "unknown backbone 'gpt7'" in capsys.readouterr().err


@pytest.mark.slow
def test_minilm_sst2_learns(tmp_path, data):
    """A real backbone learns SST-2: accuracy clearly above the majority class (0.509)."""
    doc = {"suites": {"r": {"methods": ["lora"], "tasks": ["glue/sst2"], "backbones": ["minilm-l6"],
                            "prefix_lengths": [1], "seeds": [0],
                            "train": {"train_steps": 60, "batch_size": 32, "max_length": 64,
                                      "eval_limit": 300}}}}
    run_cells(expand(doc, "r"), tmp_path, data, torch.device("cpu"), log=lambda s: None)
    (rec,) = read_records(tmp_path)[0]
    assert rec.status == "ok", rec.error
    assert rec.main_score > 0.65, rec.main_score
    assert rec.backbone_source.startswith("local:")


def test_render_leaves_out_cells_the_suite_no_longer_defines(tmp_path, data, capsys):
    """Changing a suite's config gives new cell ids; the old rows must not be averaged in,
    not even with --all-records (which keeps cells the suite no longer has)."""
    from bench import cli

    toml = tmp_path / "s.toml"
    body = ('[suites.x]\nmethods=["lora"]\ntasks=["glue/sst2"]\nbackbones=["tiny-llama"]\n'
            'prefix_lengths=[2]\nseeds=[0]\n'
            'train={{train_steps={steps}, batch_size=4, eval_limit=8, train_limit=32, max_length=32}}\n')
    args = ["--config", str(toml), "--suite", "x", "--results", str(tmp_path / "r"),
            "--tables", str(tmp_path / "t"), "--quiet"]
    for steps in (2, 3):
        toml.write_text(body.format(steps=steps))
        assert cli.main(["run", "--data-dir", str(data.data_dir), *args]) == 0
    assert len(read_records(tmp_path / "r")[0]) == 2
    capsys.readouterr()
    assert cli.main(["render", *args]) == 0
    assert "left out 1 cell(s) no longer in suite 'x'" in capsys.readouterr().err
    table = (tmp_path / "t" / "glue_sst2__tiny-llama.csv").read_text()
    assert "(n=1)" in table and "n=2" not in table
    assert cli.main(["render", "--all-records", *args]) == 0
    assert "n=2" not in (tmp_path / "t" / "glue_sst2__tiny-llama.csv").read_text()
    assert "1 older row(s) left out" in (tmp_path / "t" / "glue_sst2__tiny-llama.md").read_text()


def test_render_of_a_searched_suite_keeps_its_trials_as_current(tmp_path, data, capsys):
    """A search's trial rows are the suite's own cells (the progress table shows them), never
    counted as cells the suite no longer defines."""
    from bench import cli

    toml = tmp_path / "s.toml"
    toml.write_text('[suites.x]\nmethods=["lora"]\ntasks=["glue/sst2"]\nbackbones=["tiny-llama"]\n'
                    'prefix_lengths=[2]\nseeds=[0]\nsearch={lr=[1e-3, 3e-3]}\n'
                    'train={train_steps=2, batch_size=4, eval_limit=8, train_limit=32, max_length=32, holdout=0.25}\n')
    args = ["--config", str(toml), "--suite", "x", "--results", str(tmp_path / "r"),
            "--tables", str(tmp_path / "t"), "--quiet"]
    assert cli.main(["run", "--data-dir", str(data.data_dir), *args]) == 0
    assert len(read_records(tmp_path / "r")[0]) == 3  # two trials, one final
    capsys.readouterr()
    assert cli.main(["render", *args]) == 0
    assert "left out" not in capsys.readouterr().err
    assert "lora" in (tmp_path / "t" / "search.md").read_text()
