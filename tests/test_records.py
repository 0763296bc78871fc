import json

import pytest

from bench.core.config import ConfigError
from bench.core.record_schema import SCHEMA_VERSION
from bench.core.records import ResultRecord, append_record, finished_ids, read_records


def _rec(cid: str, status: str = "ok", score: float = 0.5) -> ResultRecord:
    return ResultRecord(cell_id=cid, suite="s", method="lora", task="glue/sst2", backbone="tiny-bert",
                        prefix_length=None, seed=0, status=status, main_metric="accuracy", main_score=score,
                        metrics={"accuracy": score}, config={"a": 1})


def test_round_trip(tmp_path):
    recs = [_rec("a"), _rec("b", "failed")]
    for r in recs:
        append_record(tmp_path, r)
    back, problems = read_records(tmp_path)
    assert problems == []
    assert back == recs
    assert finished_ids(back) == {"a"}


def test_torn_line_is_reported_and_appending_continues(tmp_path):
    append_record(tmp_path, _rec("a"))
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write('{"cell_id": "torn", "sta')  # a crash mid-write of an older version
    append_record(tmp_path, _rec("b"))
    back, problems = read_records(tmp_path)
    assert [r.cell_id for r in back] == ["a", "b"]
    assert len(problems) == 1 and ":2:" in problems[0]


def test_latest_record_wins_for_retried_cells(tmp_path):
    append_record(tmp_path, _rec("a", "failed"))
    append_record(tmp_path, _rec("a", "ok"))
    back, _ = read_records(tmp_path)
    assert finished_ids(back) == {"a"}


def test_schema_1_records_are_migrated(tmp_path):
    """Schema 1 measured only the training-time adapter: the deployed figures are unknown,
    not copied from it; a line without schema_version is read as schema 1."""
    old = {k: v for k, v in json.loads(_rec("a").to_json()).items() if not k.startswith("inference_")}
    lines = [dict(old, schema_version=1, adapter_bytes=9_800_000), {k: v for k, v in old.items() if k != "schema_version"}]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    back, problems = read_records(tmp_path)
    assert not problems and len(back) == 2
    for r in back:
        assert r.schema_version == SCHEMA_VERSION and r.inference_bytes is None and r.inference_params is None
    assert back[0].adapter_bytes == 9_800_000


def test_schema_3_records_are_migrated_as_ordinary_cells(tmp_path):
    """Schema 3 knew no search and no early stopping: a row is an ordinary cell's, its
    held-out score unknown, early stopping off."""
    new = ("role", "holdout_score", "best_step", "stopped_step", "plateaued", "search")
    old = {k: v for k, v in json.loads(_rec("a").to_json()).items() if k not in new}
    (tmp_path / "records.jsonl").write_text(json.dumps(dict(old, schema_version=3)) + "\n")
    back, problems = read_records(tmp_path)
    assert not problems and len(back) == 1
    r = back[0]
    assert r.schema_version == SCHEMA_VERSION and r.role == "" and r.search == {}
    assert (r.holdout_score, r.best_step, r.stopped_step, r.plateaued) == (None, None, None, None)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, "2", 0])
def test_records_of_an_unknown_schema_are_refused_naming_file_and_line(tmp_path, version):
    append_record(tmp_path, _rec("a"))
    newer = dict(json.loads(_rec("b").to_json()), schema_version=version, field_of_the_future=1)
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write(json.dumps(newer) + "\n")
    with pytest.raises(ConfigError, match=rf"records.jsonl:2: .*schema_version {version!r}"):
        read_records(tmp_path)
