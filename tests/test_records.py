from bench.records import ResultRecord, append_record, finished_ids, read_records


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
