"""The page and leaderboard open with the answer: a methods × tables summary and each
prefix method against LoRA (and full fine-tuning) at matched seeds, with a CI and p-value."""

from __future__ import annotations

import pandas as pd

from bench.core.records import ResultRecord
from bench.report.summary import summary_table, versus_references
from bench.report.views import records_frame


def _row(method: str, seed: int, score: float, plen: int | None = None, tok_s: float = 100.0) -> ResultRecord:
    return ResultRecord(cell_id=f"{method}{plen}{seed}", suite="s", method=method, task="glue/sst2",
                        backbone="minilm-l6", prefix_length=plen, seed=seed, status="ok", main_metric="accuracy",
                        main_score=score, config={"method": method, "prefix_length": plen, "seed": seed}, train_tokens_per_s=tok_s,
                        inference_bytes=1024 * (plen or 100))


def _frame(rows: list[ResultRecord]) -> pd.DataFrame:
    return records_frame(rows)


def test_prefix_methods_are_paired_with_lora_by_seed() -> None:
    seeds = range(6)
    rows = [_row("lora", s, 0.80 + 0.01 * s, tok_s=100) for s in seeds]
    rows += [_row("prefix_tuning", s, 0.85 + 0.01 * s, plen=20, tok_s=150) for s in seeds]  # +0.05 on every seed
    rows += [_row("prefix_tuning", s, 0.80 + 0.01 * s + (0.002 if s % 2 else -0.002), plen=5) for s in seeds]
    v = versus_references(_frame(rows)).set_index(["method", "P"])
    p20, p5 = v.loc[("prefix_tuning", "20")], v.loc[("prefix_tuning", "5")]
    assert p20["pairs"] == 6 and p20["difference"] == "+0.0500" and p20["verdict"] == "prefix_tuning better than lora"
    assert p20["p"] == "0.031"  # the exact permutation test's smallest p at 6 pairs: 2/64
    assert p5["verdict"] == "no significant difference"


def test_three_seeds_never_give_a_verdict_and_one_seed_gives_no_test() -> None:
    rows = [_row("lora", s, 0.80) for s in range(3)] + [_row("prompt_tuning", s, 0.90, plen=5) for s in range(3)]
    # the CI may exclude 0, but 3 pairs cannot reach p < 0.05: no test, and the row says why
    assert versus_references(_frame(rows)).iloc[0]["verdict"] == "inconclusive: 3 pairs allow no p below 0.25"
    one = versus_references(_frame(rows[:1] + rows[3:4])).iloc[0]
    assert one["verdict"] == "n<2: no verdict" and one["p"] == "n<2, no test"


def test_the_length_to_deploy_is_chosen_on_the_held_out_slice_and_paired_with_lora() -> None:
    """P=5 has the better held-out score, P=20 the better evaluation score: the "best on held-out"
    row is P=5's, so the headline comparison never picks its length on the evaluation split."""
    import dataclasses

    rows = [_row("lora", s, 0.80 + 0.01 * s) for s in range(6)]
    rows += [dataclasses.replace(_row("prefix_tuning", s, 0.78 + 0.01 * s, plen=5), holdout_score=0.90) for s in range(6)]
    rows += [dataclasses.replace(_row("prefix_tuning", s, 0.85 + 0.01 * s, plen=20), holdout_score=0.85) for s in range(6)]
    v = versus_references(_frame(rows)).set_index(["method", "P"])
    best = v.loc[("prefix_tuning", "5 (best on held-out)")]
    assert best["pairs"] == 6 and best["difference"] == "-0.0200" and best["verdict"] == "prefix_tuning worse than lora"
    # without held-out scores no length is chosen for the headline (only the per-length rows)
    plain = versus_references(_frame([dataclasses.replace(r, holdout_score=None) for r in rows]))
    assert not plain["P"].str.contains("best").any()


def test_summary_shows_best_length_marked_and_speed_relative_to_lora() -> None:
    rows = [_row("lora", s, 0.80, tok_s=100) for s in range(2)]
    rows += [_row("prefix_tuning", s, 0.70, plen=5, tok_s=200) for s in range(2)]
    rows += [_row("prefix_tuning", s, 0.75, plen=20, tok_s=200) for s in range(2)]
    t = summary_table(_frame(rows)).set_index("method")
    cell = t.loc["prefix_tuning", "glue/sst2 on minilm-l6: accuracy"]
    assert cell.startswith("0.7500") and cell.endswith("(P=20*)")
    assert t.loc["prefix_tuning", "glue/sst2 on minilm-l6: train speed vs lora"] == "2.00×"
    assert t.loc["lora", "glue/sst2 on minilm-l6: train speed vs lora"] == "1.00×"
    assert t.loc["prefix_tuning", "glue/sst2 on minilm-l6: deployed size"] == "20.0 KB"
