"""Records -> leaderboards. A pure step: never trains.

Per (task, backbone) slice, under the tables folder:
- ``STEM.md`` / ``STEM.csv``: rows are methods, columns prefix lengths, cells the main
  metric's mean ± std over seeds with n and a 95% t-interval; then trainable parameters,
  deployed adapter size (its inference state, e.g. the folded prefix), throughput and peak memory; below it paired comparisons (p-values),
  prefix-length sensitivity and Pareto tables with their plots.
- ``search.md`` / ``search.csv``: where rows carry a learning-rate search, each method's grid,
  held-out scores, chosen rate, grid-edge flag and cost, and how many of its runs plateaued.
- ``search_progress.md`` / ``.csv``: searches still running (trial rows, no final row yet):
  the held-out score of each trial finished so far; written even before any table has a number.
- ``STEM__scores.csv``, ``STEM__paired.csv``, ``STEM__sensitivity.csv``,
  ``STEM__sensitivity_curve.csv``, ``STEM__pareto.csv``: the numbers behind them.
- ``STEM__sensitivity.png``, ``STEM__pareto.png``, ``STEM.tex`` (LaTeX booktabs).
And for the whole folder: ``leaderboard.md`` (every slice's main table, for a CI job
summary) and ``index.html`` (one static, sortable page with the plots embedded).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.core.record_formats import write_parquet
from bench.core.records import ResultRecord, result_rows
from bench.core.safe_names import inside
from bench.core.task_facts import Facts
from bench.report import failures, html_page, latex
from bench.report.escape import csv_cell, map_text, markdown
from bench.report.glue_board import glue_average_table
from bench.report.search_view import (
    PROGRESS_NOTE,
    PROGRESS_TITLE,
    SEARCH_NOTE,
    SEARCH_TITLE,
    search_table,
    trials_table,
)
from bench.report.summary import summary_markdown, summary_table, versus_references
from bench.report.views import _md, build_views, newest_experiments, records_frame, slice_markdown


def render(records: list[ResultRecord], out_dir: Path, plots: bool = True, facts: Facts | None = None,
           order: list[tuple[str, str]] | None = None) -> list[Path]:
    """Write every table, plot and page for ``records`` under ``out_dir``; returns the paths.
    ``facts`` (``tasks.task_facts()``) gives metric directions, corpus-level metrics and the
    GLUE average; without it every metric is higher-is-better and no average is drawn.
    ``order``: the suite's (task, backbone) order for the summary and the per-table detail."""
    out_dir.mkdir(parents=True, exist_ok=True)
    running = trials_table(records)
    records = result_rows(records)  # search trials chose a learning rate; they are not results
    views = build_views(records, facts, order)
    written: list[Path] = []

    def out(name: str) -> Path:  # every write goes through this guard (bench/core/safe_names.py)
        return inside(out_dir, name)

    progress_md = ""
    if len(running):  # a long search's findings so far, before any final row exists
        progress_md = f"## {PROGRESS_TITLE}\n\n{_md(running)}\n\n{markdown(PROGRESS_NOTE)}\n"
        out("search_progress.md").write_text(progress_md, encoding="utf-8")
        written += [out("search_progress.md"), _csv(running, out("search_progress.csv"))]

    for v in views:
        if plots:
            from bench.report import plots as plotting
            flat = v.scores[v.scores["prefix_length"].isna() & v.scores["mean"].notna()][["method", "mean"]]
            title = f"{v.title}: {v.metric}"
            # no plot of fewer than two points: a curve needs a method run at two lengths
            curve = v.sens_curve.dropna(subset=["mean"])
            if len(curve) and curve.groupby("method").size().max() >= 2:
                v.images["sensitivity"] = plotting.sensitivity_plot(
                    v.sens_curve, flat, title, v.metric, out(f"{v.stem}__sensitivity.png"))
            if v.pareto["score"].notna().sum() >= 2:
                v.images["pareto"] = plotting.pareto_plot(v.pareto, title, v.metric, out(f"{v.stem}__pareto.png"))
        md = out(f"{v.stem}.md")
        md.write_text(slice_markdown(v), encoding="utf-8")
        board = failures.with_notes_column(v.board, v.notes)
        if v.unstable:  # a CSV has no place below the table
            board = board.assign(unstable=" | ".join(v.unstable))
        tables = {"": board, "__scores": v.scores, "__paired": v.paired, "__sensitivity": v.sens_scores,
                  "__sensitivity_curve": v.sens_curve, "__pareto": v.pareto}
        csvs = [_csv(frame, out(f"{v.stem}{suffix}.csv")) for suffix, frame in tables.items()]
        tex = out(f"{v.stem}.tex")
        tex.write_text(latex.slice_latex(v), encoding="utf-8")
        written += [md, *csvs, tex, *v.images.values()]
    glue = glue_average_table(records, facts)
    glue_md = ""
    if len(glue):
        glue_md = ("## GLUE average (tasks run so far; per-task scores are seed means)\n\n" + _md(glue) + "\n")
        out("glue_average.md").write_text(glue_md, encoding="utf-8")
        _csv(glue, out("glue_average.csv"))
        written += [out("glue_average.md"), out("glue_average.csv")]
    if views:
        df = records_frame(records)
        overview, verdicts = summary_table(df, facts, order), versus_references(df, facts, order)
        head = summary_markdown(overview, verdicts)
        if len(overview):
            written += [_csv(overview, out("summary.csv")), _csv(verdicts, out("verdicts.csv"))]
        searched = search_table(newest_experiments(records)[0])
        search_md = ""
        if len(searched):
            search_md = f"## {SEARCH_TITLE}\n\n{_md(searched)}\n\n{markdown(SEARCH_NOTE)}\n"
            out("search.md").write_text(search_md, encoding="utf-8")
            written += [out("search.md"), _csv(searched, out("search.csv"))]
        board = out("leaderboard.md")
        board.write_text("\n".join([head] * bool(head) + [search_md] * bool(search_md)
                                   + [progress_md] * bool(progress_md)
                                   + [slice_markdown(v, images=False) for v in views]
                                   + [glue_md] * bool(glue_md)), encoding="utf-8")
        page = out("index.html")
        page.write_text(html_page.page(views, overview, verdicts, searched=searched), encoding="utf-8")
        written += [board, page, write_parquet(records, out("records.parquet"))]  # the rows, as data
    return written


def _csv(frame: pd.DataFrame, path: Path) -> Path:
    map_text(frame, csv_cell).to_csv(path, index=False)
    return path
