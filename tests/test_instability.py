"""A cell whose number changes between machines or seeds by more than its noise says so in
every table format (issue #12)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest

from bench.core.records import ResultRecord
from bench.report.instability import MARK
from bench.report.render import render
from tasks import task_facts

EPYC = {"cpu_model": "AMD EPYC", "aten_cpu_capability": "AVX512"}
XEON = {"cpu_model": "Intel Xeon", "aten_cpu_capability": "AVX2"}
MD = "glue_sst2__minilm-l6.md"


def _row(seed: int, score: float, kernels=EPYC, method: str = "prompt_tuning", collapsed: bool = False,
         cell: str | None = None) -> ResultRecord:
    return ResultRecord(cell_id=cell or f"{method}-{seed}", suite="s", method=method, task="glue/sst2",
                        backbone="minilm-l6", prefix_length=20, seed=seed, status="ok", main_metric="accuracy",
                        main_score=score, collapsed=collapsed, config={"method": method, "seed": seed},
                        device="cpu:x86_64:2threads", kernels=dict(kernels))


def _line(md: str, method: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {method}"))


def test_a_cell_that_moves_between_machines_beyond_its_seeds_noise_is_marked(tmp_path) -> None:
    seeds = [_row(0, 0.697), _row(1, 0.701), _row(2, 0.699)]
    elsewhere = _row(0, 0.516, kernels=XEON)  # the same cell (id) on another machine
    render([elsewhere, *seeds, _row(0, 0.80, method="lora")], tmp_path, plots=False, facts=task_facts())
    md = (tmp_path / MD).read_text(encoding="utf-8")
    assert MARK in _line(md, "prompt_tuning") and MARK not in _line(md, "lora")
    assert "changes between machines by 0.1810" in md and "Intel Xeon" in md and "AMD EPYC" in md
    for name in ("glue_sst2__minilm-l6.tex", "glue_sst2__minilm-l6.csv", "index.html"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert ("neq" if name.endswith(".tex") else MARK) in text and "0.1810" in text, name


def test_a_difference_within_the_seeds_noise_is_not_marked(tmp_path) -> None:
    seeds = [_row(0, 0.60), _row(1, 0.70), _row(2, 0.80)]  # std 0.1
    render([_row(0, 0.62, kernels=XEON), *seeds], tmp_path, plots=False, facts=task_facts())
    assert MARK not in (tmp_path / MD).read_text(encoding="utf-8")


def test_without_a_spread_any_difference_between_machines_counts(tmp_path) -> None:
    render([_row(0, 0.6971, kernels=XEON), _row(0, 0.6970)], tmp_path, plots=False, facts=task_facts())
    md = (tmp_path / MD).read_text(encoding="utf-8")
    assert MARK in _line(md, "prompt_tuning") and "no seed spread" in md
    same = tmp_path / "same"
    render([_row(0, 0.697, kernels=XEON), _row(0, 0.697)], same, plots=False, facts=task_facts())
    assert MARK not in (same / MD).read_text(encoding="utf-8")


def test_seeds_that_split_between_collapse_and_learning_are_marked(tmp_path) -> None:
    rows = [_row(0, 0.51, collapsed=True), _row(1, 0.70), _row(2, 0.71),
            _row(0, 0.51, method="lora", collapsed=True), _row(1, 0.51, method="lora", collapsed=True)]
    render(rows, tmp_path, plots=False, facts=task_facts())
    md = (tmp_path / MD).read_text(encoding="utf-8")
    assert MARK in _line(md, "prompt_tuning") and "1 of 3 seeds collapsed" in md
    assert MARK not in _line(md, "lora")  # every seed collapsed: one outcome, flagged † already


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_the_mark_compiles_in_latex(tmp_path) -> None:
    render([_row(0, 0.5, kernels=XEON), _row(0, 0.7)], tmp_path, plots=False, facts=task_facts())
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n\\begin{document}\n"
                   + (tmp_path / "glue_sst2__minilm-l6.tex").read_text(encoding="utf-8") + "\\end{document}\n",
                   encoding="utf-8")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_rows_of_one_machine_are_never_compared_with_themselves(tmp_path) -> None:
    older = _row(0, 0.5)
    newer = dataclasses.replace(older, main_score=0.7)  # a re-run on the same machine: newest wins
    render([older, newer], tmp_path, plots=False, facts=task_facts())
    assert MARK not in (tmp_path / MD).read_text(encoding="utf-8")
