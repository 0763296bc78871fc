"""Failed runs stay visible: in every table and format a cell whose runs all failed reads
"failed", a cell with some failed seeds shows the ok statistic and "k of n failed", and an
ok row whose main score is NaN or infinite counts as failed. ``compare`` exits 1 naming a
cell that failed, went missing or became NaN in B."""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.core.records import ResultRecord, append_record
from bench.report.glue_board import glue_average_table
from bench.report.render import render
from bench.report.verdicts import report
from bench.report.views import build_views, records_frame
from tasks import task_facts

TASK, BACKBONE = "glue/sst2", "minilm-l6"


def rec(method: str, length: int | None, seed: int, score: float | None = 0.8, status: str = "ok",
        error: str = "", task: str = TASK) -> ResultRecord:
    return ResultRecord(
        cell_id=f"{method}-{task}-{length}-{seed}", suite="s", method=method, task=task, backbone=BACKBONE,
        prefix_length=length, seed=seed, status=status, error=error,
        main_metric="accuracy" if status == "ok" else "", main_score=score if status == "ok" else None,
        metrics={"accuracy": score} if status == "ok" else {}, trainable_params=1000, adapter_bytes=4000,
        train_tokens_per_s=5000.0, eval_tokens_per_s=9000.0, peak_memory_bytes=300 * 1024**2)


def failed(method: str, length: int | None, seed: int, error: str = "RuntimeError: boom", **kw) -> ResultRecord:
    return rec(method, length, seed, status="failed", error=error, **kw)


def scenario() -> list[ResultRecord]:
    """lora all ok; prompt_tuning's every run failed (the method would vanish from a table
    that drops failed rows); prefix_tuning at P=5 lost one seed of three, and at P=20 one
    seed recorded ok with a NaN score."""
    out = [rec("lora", None, s, 0.84 + 0.001 * s) for s in range(3)]
    out += [failed("prompt_tuning", p, s, "RuntimeError: non-finite training loss nan at step 2")
            for p in (5, 20) for s in range(3)]
    out += [rec("prefix_tuning", 5, s, 0.80 + 0.01 * s) for s in (0, 1)] + [failed("prefix_tuning", 5, 2, "OOM")]
    out += [rec("prefix_tuning", 20, s, 0.82 + 0.01 * s) for s in (0, 1)] + [rec("prefix_tuning", 20, 2, math.nan)]
    return out


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("failed")
    return out, render(scenario(), out, facts=task_facts())


def stem_file(tables, suffix: str) -> Path:
    return next(p for p in tables[1] if p.name.endswith(suffix) and "glue_average" not in p.name)


def md_board(text: str) -> dict[str, list[str]]:
    """The first markdown table as {method: cells}, header under ''."""
    table = next(part for part in text.split("\n\n") if part.startswith("|"))
    lines = [line for line in table.splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {"": rows[0]} | {r[0]: r for r in rows[2:]}


def test_markdown_marks_failed_and_partly_failed_cells(tables):
    text = stem_file(tables, ".md").read_text(encoding="utf-8")
    board = md_board(text)
    cols = board[""]
    pt = dict(zip(cols, board["prompt_tuning"], strict=True))
    assert pt["P=5"].startswith("failed §") and pt["P=20"].startswith("failed §")
    assert pt["trainable params"] == "—" and pt["peak memory"] == "—"  # nothing was measured
    prefix = dict(zip(cols, board["prefix_tuning"], strict=True))
    assert prefix["P=5"].startswith("0.8050 ± ") and "(n=2" in prefix["P=5"] and "1 of 3 failed §" in prefix["P=5"]
    assert prefix["P=20"].startswith("0.8250 ± ") and "1 of 3 failed §" in prefix["P=20"]  # NaN not averaged
    assert "failed" not in board["lora"][cols.index("no prefix")]
    notes = re.findall(r"^- (§\d+ .*)$", text, flags=re.M)
    assert len(notes) == 4
    assert any("prompt_tuning, P=5: 3 of 3 run(s) failed: seeds 0, 1, 2: RuntimeError: non-finite" in n
               for n in notes)
    assert any("prefix_tuning, P=5: 1 of 3 run(s) failed: seed 2: OOM" in n for n in notes)
    assert any("prefix_tuning, P=20" in n and "accuracy = nan is not a finite number" in n for n in notes)
    # every mark in the table has its note
    marks = set(re.findall(r"§\d+", text.split("Failed runs")[0]))
    assert marks == {n.split()[0] for n in notes}
    # the Pareto view keeps the failed configurations too, and sensitivity the failed lengths
    pareto = text.split("### Pareto views")[1]
    assert pareto.count("| prompt_tuning ") == 2 and "failed §" in pareto
    sens = text.split("### Prefix-length sensitivity")[1].split("###")[0]
    assert re.search(r"\| prompt_tuning +\| 0; failed §\d+, §\d+ ", sens)
    assert re.search(r"\| prefix_tuning +\| 2; failed §\d+, §\d+ ", sens)


def test_leaderboard_md_carries_the_marks(tables):
    text = (tables[0] / "leaderboard.md").read_text(encoding="utf-8")
    assert "| prompt_tuning " in text and "failed §" in text and "Failed runs" in text


def test_csv_has_the_failures(tables):
    with open(stem_file(tables, ".tex").with_suffix(".csv"), newline="", encoding="utf-8") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert rows["prompt_tuning"]["P=5"].startswith("failed §")
    assert "RuntimeError: non-finite training loss" in rows["prompt_tuning"]["failures"]
    assert rows["lora"]["failures"] == ""
    scores = pd.read_csv(stem_file(tables, "__scores.csv"))
    by_key = {(m, None if pd.isna(p) else int(p)): r for m, p, r in zip(scores["method"], scores["prefix_length"],
                                                                         scores.to_dict("records"), strict=True)}
    assert by_key[("prompt_tuning", 5)]["n"] == 0 and by_key[("prompt_tuning", 5)]["failed_runs"] == 3
    assert by_key[("prefix_tuning", 20)]["n"] == 2 and by_key[("prefix_tuning", 20)]["failed_runs"] == 1
    assert by_key[("prefix_tuning", 20)]["mean"] == pytest.approx(0.825)
    assert by_key[("lora", None)]["failed_runs"] == 0


def test_latex_marks_failed_cells(tables):
    tex = stem_file(tables, ".tex").read_text(encoding="utf-8")
    row = next(line for line in tex.splitlines() if line.startswith("prompt\\_tuning"))
    assert row.count("failed §") == 2
    assert "\\par §" in tex and "OOM" in tex


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, dict]] = []
        self._open: dict | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "td":
            self._open = dict(attrs)
            self.cells.append(("", self._open))

    def handle_data(self, data):
        if self._open is not None:
            text, attrs = self.cells[-1]
            self.cells[-1] = (text + data, attrs)

    def handle_endtag(self, tag):
        if tag == "td":
            self._open = None


def test_html_cells_show_the_error_on_hover(tables):
    parser = _Cells()
    parser.feed((tables[0] / "index.html").read_text(encoding="utf-8"))
    marked = [(t, a) for t, a in parser.cells if "§" in t]
    assert marked and all("title" in a for _, a in marked)
    oom = [a["title"] for t, a in marked if "1 of 3 failed" in t and "OOM" in a["title"]]
    assert oom and "seed 2" in oom[0]


def test_a_slice_whose_runs_all_failed_still_gets_a_table():
    views = build_views([failed("lora", None, 0, task="glue/rte"), *scenario()])
    rte = next(v for v in views if v.task == "glue/rte")
    assert rte.board["method"].tolist() == ["lora"] and rte.board[rte.board.columns[1]].iloc[0] == "failed §1"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "n/a", True])
def test_non_finite_or_non_numeric_ok_scores_are_failed_not_dropped(bad):
    recs = [rec("lora", None, 0, 0.8), rec("lora", None, 1, bad)]
    assert len(records_frame(recs)) == 1
    view = build_views(recs)[0]
    assert view.board["no prefix"].iloc[0].startswith("0.8000 ") and "1 of 2 failed §1" in view.board["no prefix"].iloc[0]
    assert "seed 1: recorded ok, but its main score accuracy" in view.notes[("lora", None)].text


def test_a_score_string_that_parses_is_kept_and_none_is_no_score():
    # "0.9" parses as a number (older writers); None is "no score", not a failure
    recs = [rec("lora", None, 0, 0.8), rec("lora", None, 1, "0.9"), rec("lora", None, 2, None)]
    assert len(records_frame(recs)) == 3 and not build_views(recs)[0].notes


def test_glue_average_marks_failed_tasks():
    recs = [rec("lora", None, 0, 0.8), failed("lora", None, 1), failed("lora", None, 0, task="glue/rte"),
            rec("lora", None, 0, math.nan, task="glue/mrpc")]
    row = glue_average_table(recs, task_facts()).iloc[0]
    assert row["sst2"] == "0.8000; 1 of 2 failed" and row["rte"] == "failed" and row["mrpc"] == "failed"
    assert row["GLUE average"] == "0.8000" and "rte" in row["missing"]


def test_reproduction_report_counts_failed_runs():
    text = report(scenario(), ["fixture"])
    assert "8 failed run(s) left out" in text and "prompt_tuning/glue/sst2/minilm-l6/P=5/seed=0" in text


# ---------------------------------------------------------------- compare

def write(folder: Path, records: list[ResultRecord]) -> str:
    for r in records:
        append_record(folder, r)
    return str(folder)


def baseline() -> list[ResultRecord]:
    return [rec(m, p, s, 0.8 + 0.002 * s) for m, p in (("lora", None), ("prefix_tuning", 5), ("prefix_tuning", 20),
                                                      ("prompt_tuning", 5)) for s in range(3)]


def test_compare_names_failed_missing_and_nan_cells_and_exits_1(tmp_path, capsys):
    """Acceptance: B has a failed cell, a missing cell and a NaN cell; compare exits 1 and
    names all three with their reasons."""
    a = write(tmp_path / "a", baseline())
    b_records = []
    for r in baseline():
        if r.method == "lora":
            b_records.append(failed("lora", None, r.seed, "RuntimeError: CUDA out of memory"))
        elif (r.method, r.prefix_length) == ("prefix_tuning", 20):
            continue  # went missing
        elif r.method == "prompt_tuning":
            b_records.append(dataclasses.replace(r, main_score=math.nan, metrics={"accuracy": math.nan}))
        else:
            b_records.append(r)
    b = write(tmp_path / "b", b_records)
    assert main(["compare", a, b]) == 1
    err = capsys.readouterr().err
    assert "REGRESSION lora/glue/sst2/minilm-l6/P=none: failed in B (3 of 3 run(s))" in err
    assert "CUDA out of memory" in err
    assert "REGRESSION prefix_tuning/glue/sst2/minilm-l6/P=20: missing in B" in err
    assert "REGRESSION prompt_tuning/glue/sst2/minilm-l6/P=5: main score became NaN/inf in B (3 of 3 run(s))" in err
    assert "prefix_tuning/glue/sst2/minilm-l6/P=5" not in err  # unchanged: not flagged
    assert err.count("REGRESSION") == 3


def test_compare_flags_one_failed_seed_but_still_compares_the_rest(tmp_path, capsys):
    a = write(tmp_path / "a", baseline())
    b = write(tmp_path / "b", [failed(r.method, r.prefix_length, r.seed) if (r.method, r.seed) == ("lora", 2) else r
                               for r in baseline()])
    assert main(["compare", a, b]) == 1
    captured = capsys.readouterr()
    assert "lora/glue/sst2/minilm-l6/P=none: failed in B (1 of 3 run(s)): seed 2: RuntimeError: boom" in captured.err
    assert "0.8010 (n=2); 1 failed" in captured.out  # B's ok seeds, with the failure beside them


def test_compare_a_cell_fixed_in_b_is_not_a_regression(tmp_path, capsys):
    broken = [failed(r.method, r.prefix_length, r.seed) if r.method == "lora" else r for r in baseline()]
    a = write(tmp_path / "a", broken)
    b = write(tmp_path / "b", baseline())
    assert main(["compare", a, b]) == 0
    assert "failed in A, ok in B" in capsys.readouterr().out


def test_compare_reads_a_folder_whose_every_run_failed(tmp_path, capsys):
    a = write(tmp_path / "a", baseline())
    b = write(tmp_path / "b", [failed(r.method, r.prefix_length, r.seed) for r in baseline()])
    assert main(["compare", a, b]) == 1
    assert capsys.readouterr().err.count("failed in B") == 4


def test_compare_table_escapes_names(tmp_path, capsys):
    recs = [dataclasses.replace(r, method="a|b\nc") for r in baseline() if r.method == "lora"]
    a = write(tmp_path / "a", recs)
    assert main(["compare", a, a]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(table) == 3 and "a\\|b c" in table[2]


def test_a_failure_superseded_by_a_newer_experiment_is_stale_but_a_newer_failure_shows():
    """A seed that failed under old options, re-run ok under new ones (a new cell id): the
    old failure is stale, like the old ok rows. A failure appended after the ok rows is
    the newest word on its cell and is shown."""
    old, new = {"method": "lora", "lr": 1.0}, {"method": "lora", "lr": 0.1}
    stale = dataclasses.replace(failed("lora", None, 0), cell_id="old-0", config={**old, "seed": 0})
    oks = [dataclasses.replace(rec("lora", None, s, 0.8), cell_id=f"new-{s}", config={**new, "seed": s})
           for s in (0, 1)]
    assert build_views([stale, *oks])[0].notes == {}
    later = dataclasses.replace(failed("lora", None, 2), cell_id="new-2", config={**old, "seed": 2})
    note = build_views([stale, *oks, later])[0].notes[("lora", None)]
    assert (note.failed, note.runs) == (1, 3) and "seed 2" in note.errors and "seed 0" not in note.errors
