"""Costs carry their spread: throughput is shown ± its std over seeds and marked where the
spread exceeds the gap to the nearest method; the Pareto frontier treats differences within
the points' noise as ties, so no point is dropped for being slower by noise."""

from __future__ import annotations

import pandas as pd

from bench.core.records import ResultRecord
from bench.report import pareto
from bench.report.views import NOISY, leaderboard, records_frame


def _row(method: str, seed: int, score: float, tok_s: float, size: int = 1000) -> ResultRecord:
    return ResultRecord(cell_id=f"{method}{seed}", suite="s", method=method, task="glue/sst2", backbone="b",
                        prefix_length=None, seed=seed, status="ok", main_metric="accuracy", main_score=score,
                        config={"method": method, "seed": seed}, train_tokens_per_s=tok_s, inference_bytes=size)


def test_throughput_shows_its_spread_and_marks_noise() -> None:
    rows = [_row("lora", 0, 0.8, 100), _row("lora", 1, 0.8, 300),           # 200 ± 141
            _row("prompt_tuning", 0, 0.7, 240), _row("prompt_tuning", 1, 0.7, 260),  # 250 ± 14
            _row("full_finetune", 0, 0.9, 1000), _row("full_finetune", 1, 0.9, 1002)]
    board = leaderboard(records_frame(rows)).set_index("method")["train tok/s"]
    assert board["lora"] == f"200 ± 141{NOISY}"       # spread 141 > gap 50 to prompt_tuning
    assert board["prompt_tuning"] == "250 ± 14"       # spread 14 < gap 50
    assert board["full_finetune"] == "1001 ± 1"


def test_a_point_slower_only_by_noise_stays_on_the_frontier() -> None:
    rows = [_row("a", 0, 0.80, 100), _row("a", 1, 0.80, 300),   # tok/s 200 ± 141
            _row("b", 0, 0.80, 240), _row("b", 1, 0.80, 260)]   # tok/s 250 ± 14, same score
    pts = pareto.table(records_frame(rows))
    on = dict(zip(pts["method"], pts["pareto_train_tokens_per_s"], strict=True))
    assert on == {"a": True, "b": True}  # 50 tok/s apart with ~142 of noise: a tie
    exact = [_row("a", 0, 0.80, 200), _row("b", 0, 0.80, 250)]  # one seed each: textbook dominance
    pts = pareto.table(records_frame(exact))
    assert dict(zip(pts["method"], pts["pareto_train_tokens_per_s"], strict=True)) == {"a": False, "b": True}
    assert isinstance(pts, pd.DataFrame)
