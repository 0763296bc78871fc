"""bench.report.render and its views: golden markdown, CSV/LaTeX/HTML outputs, sensitivity and
Pareto numbers on fixed records (no training)."""

from __future__ import annotations

import os
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from _records_fixture import make_records, record

from bench.core.record_schema import SCHEMA_VERSION
from bench.core.records import ResultRecord
from bench.report import pareto, sensitivity
from bench.report.html_page import sort_value
from bench.report.render import render
from bench.report.views import build_views, records_frame
from tasks import task_facts

GOLDEN = Path(__file__).parent / "golden" / "render_glue_sst2__minilm-l6.md"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tables")
    recs = make_records()
    # a failed seed is marked in the tables but kept out of the statistics; a superseded
    # retry is ignored
    recs.append(ResultRecord(cell_id="broken", suite="fixture", method="lora", task="glue/sst2",
                             backbone="minilm-l6", prefix_length=None, seed=7, status="failed", error="boom"))
    recs.insert(0, record("lora", None, 0, main_score=0.1))  # older record of a cell retried later
    render(recs, out, facts=task_facts())
    return out


def test_markdown_matches_golden(rendered):
    text = (rendered / "glue_sst2__minilm-l6.md").read_text(encoding="utf-8")
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8"), "render output changed; rerun with UPDATE_GOLDEN=1 if intended"


def test_every_output_is_written(rendered):
    stem = "glue_sst2__minilm-l6"
    for suffix in (".md", ".csv", ".tex", "__scores.csv", "__paired.csv", "__sensitivity.csv",
                   "__sensitivity_curve.csv", "__pareto.csv", "__sensitivity.png", "__pareto.png"):
        assert (rendered / f"{stem}{suffix}").stat().st_size > 0, suffix
    board = (rendered / "leaderboard.md").read_text()
    assert board.startswith("# Summary: every method on every table")  # the answer first
    assert board.index("## Prefix methods against LoRA") < board.index("## glue/sst2 on minilm-l6")
    for png in rendered.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scores_csv_has_n_and_ci_and_ignores_failed_and_superseded(rendered):
    scores = pd.read_csv(rendered / "glue_sst2__minilm-l6__scores.csv")
    lora = scores[scores["method"] == "lora"].iloc[0]
    assert lora["n"] == 3  # seed 7 failed; the 0.1 record was superseded
    assert lora["failed_runs"] == 1 and lora["errors"] == "seed 7: boom"
    assert lora["mean"] == pytest.approx((0.849 + 0.842 + 0.846) / 3)
    assert (scores["ci_low"] <= scores["mean"]).all() and (scores["mean"] <= scores["ci_high"]).all()
    assert set(scores.columns) >= {"mean", "std", "n", "ci_low", "ci_high"}


def test_latex_is_booktabs_and_escaped(rendered):
    tex = (rendered / "glue_sst2__minilm-l6.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\begin{table}" in tex
    assert "prefix\\_tuning\\_plus" in tex and "95\\% t-interval" in tex
    assert "prefix_tuning " not in tex  # an unescaped underscore would break LaTeX


def test_sensitivity_scores_follow_the_fixture():
    df = records_frame(make_records())
    s = sensitivity.scores(df).set_index("method")
    assert s.loc["prefix_tuning", "spread"] == pytest.approx(0.06)
    assert s.loc["residual_prefix", "spread"] == pytest.approx(0.004)
    assert s.loc["prefix_tuning", "best_length"] == 20
    assert s.loc["residual_prefix", "seeds_all_lengths"] == 3
    assert "lora" not in s.index  # no prefix axis, no sensitivity score
    curve = sensitivity.curves(df)
    assert len(curve) == 9 and (curve["n"] == 3).all()


def test_a_method_at_one_length_shows_no_spread_rather_than_nan():
    from bench.report.views import sensitivity_display
    recs = [r for r in make_records() if r.method != "residual_prefix" or r.prefix_length == 20]
    shown = sensitivity_display(sensitivity.scores(records_frame(recs))).set_index("method")
    assert shown.loc["residual_prefix", "spread (max−min)"] == "—"
    assert shown.loc["residual_prefix", "per-seed spread"] == "— (one length)"
    assert shown.loc["prefix_tuning", "spread (max−min)"] == "0.0600"
    assert "nan" not in shown.to_string()


def test_pareto_frontier_by_hand():
    pts = pd.DataFrame({"method": list("abcd"), "prefix_length": [1, 1, 1, 1], "score": [0.9, 0.8, 0.85, 0.7],
                        "inference_bytes": [100.0, 10.0, 200.0, 10.0]})
    front = pareto.frontier(pts, pareto.AXES[0])
    # a: best score; b: cheapest at 0.8 (d is as cheap but worse); c: dominated by a
    assert front.tolist() == [True, True, False, False]
    lower = pareto.frontier(pts, pareto.AXES[0], higher_is_better=False)
    assert lower.tolist() == [False, False, False, True]


def test_lower_is_better_metric_picks_the_minimum_as_best():
    recs = [record("prefix_tuning", p, s, main_metric="loss") for p in (5, 20, 50) for s in (0, 1)]
    view = build_views(recs)[0]
    assert view.higher_is_better  # unknown metric for the task: defaults to higher-is-better
    s = sensitivity.scores(records_frame(recs), higher_is_better=False)
    assert s.iloc[0]["best_length"] == 5


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.images = 0
        self.scripts = 0
        self._cell: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"id": a.get("id"), "headers": [], "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = {"tag": tag, "text": "", "sort": a.get("data-sort")}
        elif tag == "img" and a.get("src", "").startswith("data:image/png;base64,"):
            self.images += 1
        elif tag == "script":
            self.scripts += 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            t = self.tables[-1]
            (t["headers"] if self._cell["tag"] == "th" else t["rows"][-1]).append(self._cell)
            self._cell = None


def test_html_page_parses_to_sortable_tables_with_embedded_plots(rendered):
    parser = _Tables()
    parser.feed((rendered / "index.html").read_text(encoding="utf-8"))
    board = next(t for t in parser.tables if t["id"] == "board-glue_sst2__minilm-l6")
    assert [h["text"] for h in board["headers"]][:5] == ["method", "P=5", "P=20", "P=50", "no prefix"]
    rows = [r for r in board["rows"] if r]
    assert [r[0]["text"] for r in rows] == ["lora", "prefix_tuning", "prefix_tuning_plus", "residual_prefix"]
    plus_p20 = rows[2][2]
    assert plus_p20["text"].startswith("0.8703 ± ") and float(plus_p20["sort"]) == pytest.approx(0.8703)
    assert {t["id"].split("-")[0] for t in parser.tables} == {"summary", "verdicts", "board", "paired",
                                                              "sensitivity", "pareto"}
    assert parser.tables[0]["id"] == "summary"  # the page opens with the answer
    assert parser.images == 2 and parser.scripts == 1


def test_sort_values_understand_units_and_separators():
    assert sort_value("1.5 KB") == 1536 and sort_value("74,000") == 74000
    assert sort_value("+0.0297") == pytest.approx(0.0297) and sort_value("−0.5") == -0.5
    assert sort_value("lora") is None and sort_value("") is None


def test_two_slices_get_two_sections(tmp_path):
    recs = make_records(seeds=(0,)) + make_records(seeds=(0,), task="glue/rte")
    written = render(recs, tmp_path, plots=False, facts=task_facts())
    assert {p.name for p in written if p.suffix == ".md"} == {
        "glue_sst2__minilm-l6.md", "glue_rte__minilm-l6.md", "leaderboard.md", "glue_average.md"}
    # below the summary: the verdicts, two slices and the GLUE average
    assert (tmp_path / "leaderboard.md").read_text().count("\n## ") == 4


def test_runs_without_scores_or_costs_render_without_crashing(tmp_path):
    recs = [record("lora", None, 0), record("lora", None, 1, main_score=None),
            record("prefix_tuning", 5, 0, main_score=None),
            record("prefix_tuning", 5, 1, main_score=None, train_tokens_per_s=0.0, peak_memory_bytes=0)]
    render(recs, tmp_path, facts=task_facts())
    text = (tmp_path / "glue_sst2__minilm-l6.md").read_text()
    assert "| 0.8490 (n=1) " in text and "± 0.0000" not in text and "| prefix_tuning | 5         | —  " in text
    assert not (tmp_path / "glue_sst2__minilm-l6__sensitivity.png").exists()


def test_one_seed_shows_the_value_alone_and_one_pair_is_no_test(tmp_path):
    """n=1 has no spread and no CI to print; one matched pair has no p-value (a sign flip of
    one difference is as extreme as itself, which used to print p = 1.000 with a CI)."""
    recs = make_records(methods=("prefix_tuning", "prefix_tuning_plus"), seeds=(0,), lengths=(5,))
    render(recs, tmp_path, plots=False, facts=task_facts())
    text = (tmp_path / "glue_sst2__minilm-l6.md").read_text()
    assert "0.7840 (n=1)" in text and "0.8120 (n=1)" in text
    assert "±" not in text.split("###")[0].split("\n", 1)[1] and "CI 0." not in text
    paired = text.split("### Paired comparisons")[1].split("###")[0]
    row = next(line for line in paired.splitlines() if line.startswith("| prefix_tuning "))
    assert row.count("n<2, no test") == 2 and "1.000" not in row and "-0.0280" in row
    csv = pd.read_csv(tmp_path / "glue_sst2__minilm-l6__paired.csv")
    assert csv["p_value"].isna().all() and csv["ci_low"].isna().all()


def test_rows_of_different_identities_are_never_averaged_in_one_cell(tmp_path):
    """Seeds 0 and 1 ran with one code identity, seed 0 again after a code change (a new
    cell id): the table shows the newest experiment alone and says what it left out."""
    old = {"method": "prefix_tuning", "identity": {"method": {"version": "1", "source": "a"}}}
    new = {"method": "prefix_tuning", "identity": {"method": {"version": "1", "source": "b"}}}
    recs = [record("prefix_tuning", 5, 0, config={**old, "seed": 0}, main_score=0.5),
            record("prefix_tuning", 5, 1, config={**old, "seed": 1}, main_score=0.6),
            record("prefix_tuning", 5, 0, config={**new, "seed": 0}, main_score=0.9, cell_id="new-0"),
            record("prefix_tuning", 20, 0, config={**old, "seed": 0})]  # alone at its cell: kept
    df = records_frame(recs)
    assert sorted(df["main_score"]) == [0.844, 0.9] and df.attrs["left_out"] == {("glue/sst2", "minilm-l6"): 2}
    render(recs, tmp_path, plots=False, facts=task_facts())
    text = (tmp_path / "glue_sst2__minilm-l6.md").read_text()
    assert "| 0.9000 (n=1) " in text and "2 older row(s) left out" in text
    assert "2 older row(s) left out" in (tmp_path / "index.html").read_text()


def test_render_refuses_records_of_a_newer_schema(tmp_path, capsys):
    from bench.cli import main
    from bench.core.records import append_record

    newer = SCHEMA_VERSION + 1
    append_record(tmp_path, record("lora", None, 0, schema_version=newer))
    assert main(["render", "--results", str(tmp_path), "--tables", str(tmp_path / "t"), "--quiet"]) == 2
    assert f"{tmp_path / 'records.jsonl'}:1: record schema_version {newer}" in capsys.readouterr().err
