"""bench/run/committed.py: a long suite's working and committed records kept in step; rows are
added, never removed or rewritten, and a line still being written is never copied."""

from __future__ import annotations

import json

import pytest

from bench.run import committed


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_publish_appends_the_rows_the_committed_side_lacks_and_never_a_torn_line(tmp_path):
    runs, kept = tmp_path / "runs", tmp_path / "kept"
    _write(runs / "records.jsonl", b'{"a": 1}\n{"b": 2}\n{"c": 3}\n{"half": ')
    _write(kept / "records.jsonl", b'{"old": 0}\n{"b": 2}\n')
    assert committed.merge_records(runs, kept) == 2
    assert (kept / "records.jsonl").read_bytes() == b'{"old": 0}\n{"b": 2}\n{"a": 1}\n{"c": 3}\n'
    assert committed.merge_records(runs, kept) == 0  # idempotent
    # the line being written is finished: the next checkpoint takes it
    with open(runs / "records.jsonl", "ab") as f:
        f.write(b'4}\n')
    assert committed.merge_records(runs, kept) == 1
    assert (kept / "records.jsonl").read_bytes().endswith(b'{"c": 3}\n{"half": 4}\n')


def test_adopt_seeds_an_empty_working_folder_and_a_torn_last_line_stays_its_own_line(tmp_path):
    runs, kept = tmp_path / "runs", tmp_path / "kept"
    _write(kept / "records.jsonl", b'{"a": 1}\n{"b": 2}\n')
    assert committed.sync(kept, runs) == (2, 0)
    assert (runs / "records.jsonl").read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    _write(runs / "records.jsonl", b'{"a": 1}\n{"torn')  # a crash of an older version
    assert committed.merge_records(kept, runs) == 1
    assert (runs / "records.jsonl").read_bytes() == b'{"a": 1}\n{"torn\n{"b": 2}\n'


def test_nothing_to_copy_creates_nothing(tmp_path):
    assert committed.sync(tmp_path / "absent", tmp_path / "dst") == (0, 0)
    assert not (tmp_path / "dst").exists()


def test_per_cell_files_are_copied_once_never_overwritten_links_and_other_folders_skipped(tmp_path):
    runs, kept = tmp_path / "runs", tmp_path / "kept"
    _write(runs / "curves" / "aaaa.json", b"new")
    _write(runs / "curves" / "bbbb.json", b"b")
    _write(kept / "curves" / "aaaa.json", b"committed")
    _write(runs / "adapters" / "aaaa.safetensors", b"x" * 10)
    _write(tmp_path / "secret", b"s")
    (runs / "samples").mkdir()
    (runs / "samples" / "link.json").symlink_to(tmp_path / "secret")
    assert committed.merge_files(runs, kept) == 1
    assert (kept / "curves" / "aaaa.json").read_bytes() == b"committed"
    assert (kept / "curves" / "bbbb.json").read_bytes() == b"b"
    assert not (kept / "adapters").exists() and not (kept / "samples" / "link.json").exists()


def test_cli_moves_rows_by_direction_and_refuses_a_suite_that_is_a_path(tmp_path, capsys):
    _write(tmp_path / "results" / "runs" / "standard" / "records.jsonl", b'{"a": 1}\n')
    assert committed.main(["publish", "standard", "--root", str(tmp_path)]) == 0
    assert (tmp_path / "results" / "records" / "standard" / "records.jsonl").read_bytes() == b'{"a": 1}\n'
    assert "publish standard: 1 row(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        committed.main(["adopt", "../x", "--root", str(tmp_path)])
    assert "'../x' is not a name" in capsys.readouterr().err


def test_a_working_folder_seeded_from_committed_rows_resumes_without_training(tmp_path, data):
    """What `nox -s standard` relies on across machines: rows adopted from the committed folder
    count as finished, so the next run trains only what is missing."""
    import torch
    from test_runner import TINY

    from bench.run.driver import run_cells
    from bench.run.matrix import expand

    doc = json.loads(json.dumps(TINY))
    doc["suites"]["t"].update(methods=["lora"], seeds=[0, 1])
    cells = expand(doc, "t")
    first = run_cells(cells, tmp_path / "machine1", data, torch.device("cpu"), log=lambda m: None)
    assert first["ran"] == 2 and first["failed"] == 0
    committed.sync(tmp_path / "machine1", tmp_path / "records")  # publish
    lines = (tmp_path / "records" / "records.jsonl").read_bytes().splitlines()
    (tmp_path / "records" / "records.jsonl").write_bytes(lines[0] + b"\n")  # a checkpoint before the 2nd
    assert committed.sync(tmp_path / "records", tmp_path / "machine2")[0] == 1  # adopt on a fresh machine
    again = run_cells(cells, tmp_path / "machine2", data, torch.device("cpu"), log=lambda m: None)
    assert again["skipped"] == 1 and again["ran"] == 1
