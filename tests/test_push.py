"""``prefix-bench push``: a local folder target gets exactly the records file, its schema and
every rendered table, byte for byte, and its Parquet loads with ``datasets``; the hub path
stages the very same files; records that do not validate are never pushed; offline or
without a token a hub push fails at once."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from _records_fixture import make_records

from bench import cli
from bench.core.records import append_record

SUITE = "fixture"


@pytest.fixture
def suite_dirs(tmp_path):
    """A results folder with the fixture's rows and its rendered tables (no plots: fast)."""
    from bench.report.render import render
    from tasks import task_facts

    results, tables = tmp_path / "runs", tmp_path / "tables"
    records = make_records(methods=("prefix_tuning", "lora"), seeds=(0, 1), lengths=(5, 20))
    for r in records:
        append_record(results, r)
    render(records, tables, plots=False, facts=task_facts())
    return results, tables, records


def push(results, tables, *target, suite=SUITE) -> int:
    return cli.main(["push", "--suite", suite, "--results", str(results), "--tables", str(tables), *target])


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_local_folder_gets_the_records_and_tables_byte_for_byte(suite_dirs, tmp_path):
    datasets = pytest.importorskip("datasets")
    from bench.core.record_formats import json_schema

    results, tables, records = suite_dirs
    assert push(results, tables, "--to-dir", str(tmp_path / "a")) == 0
    got = tree(tmp_path / "a")
    expected = {f"{SUITE}/records.jsonl": (results / "records.jsonl").read_bytes()}
    expected |= {f"{SUITE}/tables/{p.name}": p.read_bytes() for p in tables.iterdir() if p.is_file()}
    schema = got.pop(f"{SUITE}/record.schema.json")
    assert got == expected  # the same file set, the same bytes
    assert json.loads(schema) == json_schema()
    assert f"{SUITE}/tables/records.parquet" in got and f"{SUITE}/tables/leaderboard.md" in got
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "a" / SUITE / "tables" / "records.parquet"),
                               split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(ds["cell_id"]) == sorted(r.cell_id for r in records)
    # the file:// form is the same target
    assert push(results, tables, "--repo", (tmp_path / "b").as_uri()) == 0
    assert tree(tmp_path / "b") == tree(tmp_path / "a")


def test_a_push_mirrors_the_suite_folder_and_leaves_out_unsafe_names(suite_dirs, tmp_path, capsys):
    results, tables, _ = suite_dirs
    target = tmp_path / "out"
    assert push(results, tables, "--to-dir", str(target)) == 0
    (tables / "glue_sst2__minilm-l6.tex").unlink()  # gone from the tables since the last push
    (tables / "evil name;rm.md").write_text("x")
    (tables / "link.md").symlink_to(tmp_path / "runs" / "records.jsonl")
    (tables / "sub").mkdir()
    assert push(results, tables, "--to-dir", str(target)) == 0
    names = set(tree(target / SUITE / "tables"))
    assert "glue_sst2__minilm-l6.tex" not in names  # a file of the earlier push is removed
    assert not names & {"evil name;rm.md", "link.md", "sub"}
    out = capsys.readouterr().out
    assert all(f"left out tables entry {n!r}" in out for n in ("evil name;rm.md", "link.md", "sub"))


def test_a_planted_symlink_on_the_target_is_never_followed(suite_dirs, tmp_path):
    results, tables, _ = suite_dirs
    (tmp_path / "target").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "target" / SUITE).symlink_to(tmp_path / "elsewhere")
    assert push(results, tables, "--to-dir", str(tmp_path / "target")) == 2  # an UnsafePathError
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("damage, message", [
    ("torn", "row does not fit|unreadable line"),
    ("other-suite", "rows of suite\\(s\\) 'someone-else'"),
    ("no-tables", "records.parquet is missing"),
])
def test_records_that_do_not_validate_are_not_pushed(suite_dirs, tmp_path, capsys, damage, message):
    from _records_fixture import record

    results, tables, _ = suite_dirs
    if damage == "torn":
        with open(results / "records.jsonl", "a") as f:
            f.write('{"cell_id": "x", "seed": "zero"}\n')
    elif damage == "other-suite":
        append_record(results, record("lora", None, 2, suite="someone-else"))
    else:
        (tables / "records.parquet").unlink()
    assert push(results, tables, "--to-dir", str(tmp_path / "out")) == 2
    assert not (tmp_path / "out").exists()  # refused before anything was written
    assert re.search(message, capsys.readouterr().err)


def test_a_suite_name_that_is_not_a_folder_name_is_refused(suite_dirs, tmp_path, capsys):
    results, tables, _ = suite_dirs
    assert push(results, tables, "--to-dir", str(tmp_path / "out"), suite="../up") == 2
    assert "suite name '../up' is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "up").exists() and not (tmp_path / "out").exists()


def test_offline_a_hub_push_fails_at_once(suite_dirs, monkeypatch, capsys):
    results, tables, _ = suite_dirs
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    assert push(results, tables, "--repo", "someone/prefix-bench-results") == 2
    assert time.monotonic() - start < 10
    assert "(HF_HUB_OFFLINE is set), nothing was sent" in capsys.readouterr().err
    assert push(results, tables, "--repo", "not a repo") == 2
    assert "is not a Hugging Face repo id" in capsys.readouterr().err


def test_the_hub_path_uploads_the_local_file_set(suite_dirs, monkeypatch, tmp_path, capsys):
    """With the hub on and a token, the upload gets the same files as a local push (the
    network is faked: the test never reaches the hub)."""
    import huggingface_hub

    results, tables, _ = suite_dirs
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert push(results, tables, "--repo", "someone/bench") == 2
    assert "no Hugging Face token" in capsys.readouterr().err

    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls["create"] = (repo_id, kw)

        def upload_folder(self, **kw):
            calls["upload"] = {k: v for k, v in kw.items() if k != "folder_path"}
            calls["files"] = tree(Path(kw["folder_path"]))
            return "https://hub.example/commit/1"

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert push(results, tables, "--repo", "someone/bench") == 0
    assert calls["create"] == ("someone/bench", {"repo_type": "dataset", "private": False, "exist_ok": True})
    assert calls["upload"]["repo_type"] == "dataset" and calls["upload"]["path_in_repo"] == SUITE
    assert calls["upload"]["delete_patterns"] == "*"  # the suite's folder is mirrored, as locally
    assert push(results, tables, "--to-dir", str(tmp_path / "local")) == 0
    assert calls["files"] == tree(tmp_path / "local" / SUITE)
