"""Records as data: Parquet that `datasets` loads, and a committed JSON Schema that the
JSONL rows satisfy and that is regenerated from the record's declared fields."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _records_fixture import make_records

from bench.core.record_formats import json_schema, write_parquet
from bench.core.record_schema import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_schema_is_the_generated_one():
    committed = json.loads((ROOT / "schemas" / "record.schema.json").read_text(encoding="utf-8"))
    assert committed == json_schema(), ("schemas/record.schema.json is stale: regenerate it with "
                                        "python -c 'from pathlib import Path; from bench.core.record_formats import "
                                        "write_json_schema; write_json_schema(Path(\"schemas/record.schema.json\"))'")


def test_jsonl_rows_satisfy_the_schema_and_a_broken_row_does_not():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json_schema())
    for r in make_records():
        row = json.loads(r.to_json())
        assert not list(validator.iter_errors(row)), r.cell_id
    bad = json.loads(make_records()[0].to_json()) | {"seed": "zero"}
    assert list(validator.iter_errors(bad))


def test_parquet_loads_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    import pyarrow.parquet as pq

    records = make_records()
    path = write_parquet(records, tmp_path / "records.parquet")
    assert pq.read_schema(path).metadata[b"prefix_bench_schema_version"] == str(SCHEMA_VERSION).encode()
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == len(records)
    for row, r in zip(ds, records, strict=True):
        assert (row["cell_id"], row["method"], row["seed"]) == (r.cell_id, r.method, r.seed)
        assert row["main_score"] == r.main_score or (row["main_score"] is None and r.main_score is None) \
            or (isinstance(r.main_score, float) and math.isnan(r.main_score))
        assert json.loads(row["metrics"]) == r.metrics and json.loads(row["config"]) == r.config
