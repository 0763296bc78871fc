"""Rows scored on part of the evaluation split are marked in every table, with a note
saying what such a score is (issue #12: E2E on 20 MRs is comparable to nothing)."""

from __future__ import annotations

import dataclasses

from bench.core.records import ResultRecord
from bench.report.render import render
from bench.report.subsets import MARK
from tasks import task_facts


def _row(method: str, seed: int, n: int, total: int, task: str = "e2e_nlg") -> ResultRecord:
    return ResultRecord(cell_id=f"{method}{seed}{n}", suite="s", method=method, task=task, backbone="smollm2-135m",
                        prefix_length=None, seed=seed, status="ok", main_metric="bleu", main_score=50.0 + seed,
                        config={"method": method, "seed": seed}, eval_examples=n, eval_split_size=total)


def test_subset_rows_are_marked_in_every_format(tmp_path) -> None:
    rows = [_row("lora", 0, 20, 630), _row("lora", 1, 20, 630), _row("full_finetune", 0, 630, 630)]
    render(rows, tmp_path, plots=False, facts=task_facts())
    md = (tmp_path / "e2e_nlg__smollm2-135m.md").read_text(encoding="utf-8")
    lora = next(line for line in md.splitlines() if line.startswith("| lora"))
    full = next(line for line in md.splitlines() if line.startswith("| full_finetune"))
    assert MARK in lora and MARK not in full
    assert "20 of 630 examples" in md and "comparable to no full-split result" in md
    for name in ("e2e_nlg__smollm2-135m.tex", "e2e_nlg__smollm2-135m.csv", "index.html"):
        assert MARK in (tmp_path / name).read_text(encoding="utf-8"), name


def test_full_split_and_unknown_rows_are_not_marked(tmp_path) -> None:
    full = _row("lora", 0, 630, 630)
    old = dataclasses.replace(_row("lora", 1, 0, 0), eval_examples=None, eval_split_size=None)  # schema-1 row
    render([full, old], tmp_path, plots=False, facts=task_facts())
    assert MARK not in (tmp_path / "e2e_nlg__smollm2-135m.md").read_text(encoding="utf-8")


def test_a_classification_subset_is_called_an_estimate(tmp_path) -> None:
    rows = [dataclasses.replace(_row("lora", s, 200, 872, "glue/sst2"), main_metric="accuracy", main_score=0.8)
            for s in (0, 1)]
    render(rows, tmp_path, plots=False, facts=task_facts())
    assert "an estimate of the full-split score" in (tmp_path / "glue_sst2__smollm2-135m.md").read_text(encoding="utf-8")
