from bench.core.records import ResultRecord
from bench.report.glue_board import glue_average_table
from tasks import task_facts


def _rec(cid, task, metrics, seed=0, method="lora", plen=None):
    return ResultRecord(cell_id=cid, suite="s", method=method, task=task, backbone="b", prefix_length=plen,
                        seed=seed, status="ok", metrics=metrics)


def test_glue_average_by_hand():
    records = [
        _rec("1", "glue/sst2", {"accuracy": 0.80}, seed=0),
        _rec("2", "glue/sst2", {"accuracy": 0.90}, seed=1),          # seed mean 0.85
        _rec("3", "glue/mrpc", {"f1": 0.80, "accuracy": 0.70}),      # task score 0.75
        _rec("4", "glue/cola", {"matthews_correlation": 0.30, "accuracy": 0.70}),  # Matthews only: 0.30
        _rec("5", "glue/mnli_matched", {"accuracy": 0.60}),
        _rec("6", "glue/mnli_mismatched", {"accuracy": 0.70}),       # MNLI counts once: 0.65
        _rec("7", "e2e_nlg", {"bleu": 60.0}),                        # not GLUE: ignored
        _rec("8", "glue/sst2", {"accuracy": 0.5}, method="prefix_tuning", plen=5),
    ]
    table = glue_average_table(records, task_facts()).set_index(["method", "P"])
    row = table.loc[("lora", "—")]
    assert row["sst2"] == "0.8500" and row["mrpc"] == "0.7500" and row["cola"] == "0.3000"
    assert row["GLUE average"] == f"{(0.85 + 0.75 + 0.30 + 0.65) / 4:.4f}"
    assert row["tasks"] == 5 and "qqp" in row["missing"] and "sst2" not in row["missing"]
    other = table.loc[("prefix_tuning", "5")]
    assert other["GLUE average"] == "0.5000" and other["tasks"] == 1


def test_no_glue_records_gives_empty_table():
    assert len(glue_average_table([_rec("1", "e2e_nlg", {"bleu": 1.0})], task_facts())) == 0
