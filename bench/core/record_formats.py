"""Records as data for other tools: a JSON Schema of one ``records.jsonl`` row, and the rows
as Parquet with that schema's version in the file's metadata.

Both are derived from ``ResultRecord``'s declared fields, so they cannot drift from it;
``schemas/record.schema.json`` is the committed copy a reader can check rows against (a
test regenerates it). In Parquet, the one-level maps (``metrics``, ``versions``,
``kernels``) are map columns' JSON text and ``config`` and ``search`` (nested) are JSON text too: readers
such as ``datasets.load_dataset("parquet", ...)`` then load every column without a custom
feature type, and ``json.loads`` gives the dicts back.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from bench.core.record import ResultRecord
from bench.core.record_schema import SCHEMA_VERSION
from bench.core.records import write_atomic

SCHEMA_ID = "https://github.com/prefix-bench/prefix-bench/schemas/record.schema.json"
JSON_COLUMNS = ("metrics", "config", "versions", "kernels", "search")  # dict fields: JSON text in Parquet


def _json_type(tp: Any) -> dict[str, Any]:
    if tp is Any:
        return {}
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [_json_type(a) for a in typing.get_args(tp)]
        return {"anyOf": options}
    if tp is type(None):
        return {"type": "null"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:  # NaN is written as the bare token NaN (allow_nan): not JSON; see the description
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if origin is dict:
        _, value = typing.get_args(tp)
        return {"type": "object", "additionalProperties": _json_type(value)}
    raise TypeError(f"no JSON Schema type for {tp!r}")


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a current row of ``records.jsonl``."""
    hints = typing.get_type_hints(ResultRecord)
    fields = [f for f in dataclasses.fields(ResultRecord) if f.init]
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    props = {f.name: _json_type(hints[f.name]) for f in fields}
    props["schema_version"] = {"const": SCHEMA_VERSION}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"prefix-bench result record, schema version {SCHEMA_VERSION}",
        "description": ("One line of records.jsonl: everything one cell produced. Undefined measurements "
                        "(a loss that went NaN) are written as the token NaN, which strict JSON parsers "
                        "reject: read rows with a parser that accepts it (Python's json does)."),
        "type": "object",
        "required": required,
        "properties": props,
        "additionalProperties": True,  # readers of an older schema ignore fields they do not know
    }


def write_json_schema(path: Path) -> Path:
    return write_atomic(path, (json.dumps(json_schema(), indent=2, sort_keys=True) + "\n").encode())


def write_parquet(records: list[ResultRecord], path: Path) -> Path:
    """The rows as Parquet; the file's metadata carries ``prefix_bench_schema_version``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for r in records:
        d = dataclasses.asdict(r)
        for c in JSON_COLUMNS:
            d[c] = json.dumps(d[c], sort_keys=True, allow_nan=True)
        rows.append(d)
    names = [f.name for f in dataclasses.fields(ResultRecord)]
    table = pa.Table.from_pylist(rows, schema=_arrow_schema(pa)) if rows else _arrow_schema(pa).empty_table()
    table = table.select(names).replace_schema_metadata(
        {"prefix_bench_schema_version": str(SCHEMA_VERSION), "prefix_bench_json_columns": ",".join(JSON_COLUMNS)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def _arrow_schema(pa: Any) -> Any:
    hints = typing.get_type_hints(ResultRecord)

    def arrow(tp: Any) -> Any:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
            return arrow(args[0])
        return {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}.get(tp, pa.string())

    return pa.schema([pa.field(f.name, pa.string() if f.name in JSON_COLUMNS else arrow(hints[f.name]))
                      for f in dataclasses.fields(ResultRecord)])
