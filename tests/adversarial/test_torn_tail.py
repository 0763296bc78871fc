"""A last line torn by a crash (disk full, power loss) is set aside when the next run
starts: copied to records.jsonl.torn-<time>, cut from the file, said in one line; the next
append starts on a line of its own."""

from __future__ import annotations

import json

import pytest

from bench.core.records import RECORDS_FILE, ResultRecord, append_record, read_records
from bench.core.torn_tail import set_aside_torn_tail
from bench.run.matrix import load_suite

from ._helpers import row, write_rows

TORN_TAILS = [b'{"cell_id": "torn", "sta', b"\xff\xfe\x00 binary", b"   ", b'{"a": ' + b"[" * 5000]


@pytest.mark.parametrize("tail", TORN_TAILS)
def test_a_torn_tail_is_moved_aside_and_cut(tmp_path, tail):
    path = write_rows(tmp_path, [row(cell_id="a"), row(cell_id="b")])
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(tail)
    message = set_aside_torn_tail(tmp_path)
    assert message is not None and "\n" not in message and "torn" in message
    assert path.read_bytes() == whole  # cut back to the last whole row
    asides = list(tmp_path.glob(f"{RECORDS_FILE}.torn-*"))
    assert len(asides) == 1 and asides[0].read_bytes() == tail and str(asides[0]) in message
    assert set_aside_torn_tail(tmp_path) is None  # whole now: nothing more to do
    append_record(tmp_path, ResultRecord(**row(cell_id="c")))
    records, problems = read_records(tmp_path)
    assert [r.cell_id for r in records] == ["a", "b", "c"] and problems == []


def test_a_file_that_is_only_a_torn_line_is_emptied(tmp_path):
    (tmp_path / RECORDS_FILE).write_bytes(b'{"cell_id": "x"')
    assert "torn" in set_aside_torn_tail(tmp_path)
    assert (tmp_path / RECORDS_FILE).read_bytes() == b""


def test_a_whole_row_missing_its_newline_is_kept(tmp_path):
    path = write_rows(tmp_path, [row(cell_id="a")])
    path.write_bytes(path.read_bytes() + json.dumps(row(cell_id="b")).encode())
    assert "added one" in set_aside_torn_tail(tmp_path)
    assert not list(tmp_path.glob(f"{RECORDS_FILE}.torn-*"))
    assert [r.cell_id for r in read_records(tmp_path)[0]] == ["a", "b"]


def test_whole_or_missing_files_are_left_alone(tmp_path):
    assert set_aside_torn_tail(tmp_path) is None
    path = write_rows(tmp_path, [row(cell_id="a")])
    before = path.read_bytes()
    assert set_aside_torn_tail(tmp_path) is None and path.read_bytes() == before
    path.write_bytes(b"")
    assert set_aside_torn_tail(tmp_path) is None


def test_the_next_run_sets_the_torn_tail_aside_in_one_line(tmp_path, data):
    from bench.run.data import data_fingerprint
    from bench.run.driver import pinned_cells, run_cells

    cells = pinned_cells(load_suite(None, "tiny"))  # the ids run_cells gives them (threads pinned)
    path = write_rows(tmp_path, [row(cell_id=c.id, method=c.method, backbone=c.backbone, prefix_length=c.prefix_length,
                                     data_fingerprint=data_fingerprint(c.task, data)) for c in cells])
    with open(path, "ab") as f:
        f.write(b'{"cell_id": "half a ro')
    log: list[str] = []
    counts = run_cells(cells, tmp_path, data, "cpu", log=log.append)
    assert counts["ran"] == 0  # every cell finished; the torn fragment was nothing of theirs
    said = [line for line in log if "torn" in line]
    assert len(said) == 1 and RECORDS_FILE in said[0]
    assert not any(line.startswith("warning:") for line in log)  # gone from the file: no row warning
    assert path.read_bytes().endswith(b"}\n")
