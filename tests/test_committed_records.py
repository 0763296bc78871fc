"""Every committed table comes with the records that made it: rendering results/records/SUITE/
gives the bytes of results/tables/SUITE/ (issue 17). A table edited by hand, or records that
were not the ones rendered, fail here."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main

ROOT = Path(__file__).resolve().parent.parent
RECORDS, TABLES = ROOT / "results" / "records", ROOT / "results" / "tables"
# written beside the tables by whoever ran the suite (nox -s bench's wall time), not by render
NOT_RENDERED = {"run.log"}
# binary outputs whose bytes depend on the library build that wrote them (matplotlib's
# renderer, pyarrow's writer): compared by what they hold
IMAGES, FRAMES = {".png"}, {".parquet"}

SUITES = sorted(p.parent.name for p in RECORDS.glob("*/records.jsonl"))


def test_every_committed_table_folder_has_its_records():
    tables = sorted(p.name for p in TABLES.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert tables, "no committed tables"
    missing = [t for t in tables if t not in SUITES]
    assert not missing, f"committed tables without committed records (results/records/<suite>/records.jsonl): {missing}"


@pytest.mark.parametrize("suite", SUITES)
def test_committed_records_render_the_committed_tables(suite, tmp_path):
    out = tmp_path / suite
    assert main(["render", "--suite", suite, "--results", str(RECORDS / suite), "--tables", str(out),
                 "--all-records", "--quiet"]) == 0
    committed = {p.relative_to(TABLES / suite) for p in (TABLES / suite).rglob("*")
                 if p.is_file() and p.name not in NOT_RENDERED}
    rendered = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert committed == rendered, (f"only committed: {sorted(map(str, committed - rendered))}; "
                                   f"only rendered: {sorted(map(str, rendered - committed))}")
    differ = []
    for rel in sorted(committed):
        a, b = TABLES / suite / rel, out / rel
        if rel.suffix in FRAMES:
            pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))
        elif rel.suffix in IMAGES:
            assert b.stat().st_size > 0
        elif a.read_bytes() != b.read_bytes():
            differ.append(str(rel))
    assert not differ, f"re-rendered from results/records/{suite} these differ from the committed tables: {differ}"


def test_a_resumed_standard_run_finds_its_committed_trials_on_any_machine():
    """The standard suite resumes across machines from its committed rows. Its precision is
    pinned in the suite: left at "auto", a machine with fast bf16 plans bf16 cells whose ids match
    none of the fp32 rows a machine without it made, and re-runs every finished cell."""
    import json

    from bench.run.driver import pinned_cells
    from bench.run.executors import make_executor
    from bench.run.matrix import executor_table, load_suite

    cells = load_suite(None, "standard")
    assert {c.train["precision"] for c in cells} == {"fp32"}
    table, _ = executor_table(None, "standard")
    executor = make_executor(table.pop("name"), table, "the standard suite")
    planned = {c.id: c for c in pinned_cells([t for c in cells for t in c.trials()], executor, threads=1)}

    def point(method, task, backbone, train):  # what a trial is, but for the precision it ran at
        return method, task, backbone, json.dumps({k: v for k, v in train.items() if k != "precision"}, sort_keys=True)

    by_point = {point(c.method, c.task, c.backbone, c.train): cid for cid, c in planned.items()}
    rows = [json.loads(line) for line in (RECORDS / "standard" / "records.jsonl").read_text().splitlines()]
    current = {r["cell_id"]: by_point[p] for r in rows if r.get("role") == "trial"
               and (p := point(r["method"], r["task"], r["backbone"], r["config"]["train"])) in by_point}
    assert current, "no committed trial is of the standard suite as it stands"
    assert {row: cell for row, cell in current.items() if row != cell} == {}
