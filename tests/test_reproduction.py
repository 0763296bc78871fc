"""REPRODUCTION.md: verdicts on fixed records (confirmed, not confirmed, inconclusive)."""

from __future__ import annotations

import dataclasses

from _records_fixture import make_records

from bench.cli import main
from bench.core.records import append_record
from bench.report.verdicts import (
    CONFIRMED,
    INCONCLUSIVE,
    NOT_CONFIRMED,
    plus_beats_prefix,
    plus_close_to_lora,
    report,
    stability,
)
from bench.report.views import records_frame


def pooled(**kw):
    """The fixture on two tasks: 6 matched pairs per claim, enough for p < 0.05 (2/2**6)."""
    return make_records(task="glue/sst2", **kw) + make_records(task="glue/rte", **kw)


def as_suite(records, suite):
    """The records as runs of ``suite`` (its own cells: a suite's settings are in its cells' ids)."""
    return [dataclasses.replace(r, suite=suite, cell_id=f"{r.cell_id}-{suite}") for r in records]


def test_each_suite_tests_a_claim_on_its_own_records():
    """The standard suite and claims-stability run residual_prefix at different settings: a
    verdict never pools them. claims-stability's 3 pairs are inconclusive, standard's 6 confirm."""
    recs = as_suite(make_records(), "claims-stability") + as_suite(pooled(), "standard")
    text = report(recs, ["fixture"], {})
    rows = [line for line in text.splitlines() if line.startswith("| The gated residual prefix")]
    assert rows == [
        "| The gated residual prefix (`residual_prefix`) is more stable across prefix lengths than plain "
        "`prefix_tuning`. | seed 002 | `claims-stability` | 3 | **inconclusive** |",
        "| The gated residual prefix (`residual_prefix`) is more stable across prefix lengths than plain "
        "`prefix_tuning`. | seed 002 | `standard` | 6 | **confirmed** |"]


def test_fixture_confirms_every_claim():
    df = records_frame(pooled())
    for check in (stability, plus_beats_prefix, plus_close_to_lora):
        v = check(df)
        assert v.status == CONFIRMED, (check.__name__, v.measured)
        assert "6 matched pairs pooled over 2 tasks, 1 backbone" in v.measured
    v = stability(df)
    assert "+0.0560" in v.measured and len(v.table) == 6  # 0.06 - 0.004 on each of 3 seeds x 2 tasks
    assert "p = 0.031" in v.measured  # every pair agrees: the exact test's floor, 2/2**6


def test_three_pairs_are_inconclusive_however_clear():
    """3 seeds on one task: every pair agrees and the bootstrap CI excludes 0 (the old rule said
    "confirmed"), but 3 pairs cannot give a two-sided p below 0.25."""
    df = records_frame(make_records())
    for check in (stability, plus_beats_prefix, plus_close_to_lora):
        v = check(df)
        assert v.status == INCONCLUSIVE, check.__name__
        assert "3 pairs cannot reach p < 0.05 (the smallest p they allow is 0.250)" in v.measured
    r = stability(df)
    assert float(r.measured.split("95% CI ")[1].split(" ")[0]) > 0  # the CI alone would have confirmed


def test_best_length_is_chosen_on_the_held_out_slice():
    """With held-out scores on every run, the best prefix length is the held-out one, even where
    the evaluation split would pick another (P=20 on evaluation, P=5 on the held-out slice)."""
    recs = [dataclasses.replace(r, holdout_score=(0.9 if r.prefix_length == 5 else 0.5))
            for r in pooled()]
    v = plus_beats_prefix(records_frame(recs))
    assert "chosen on the held-out slice" in v.measured
    assert v.status == CONFIRMED  # P=5 on both sides: plus is still 0.03 ahead
    assert (v.table["prefix_tuning"] < 0.79).all()  # prefix_tuning at P=5 (0.78), not P=20 (0.84)
    on_eval = plus_beats_prefix(records_frame(pooled()))
    assert "chosen on the evaluation split" in on_eval.measured and (on_eval.table["prefix_tuning"] > 0.83).all()


def test_reversed_data_is_not_confirmed():
    swapped = {"prefix_tuning": "residual_prefix", "residual_prefix": "prefix_tuning",
               "prefix_tuning_plus": "prefix_tuning_plus", "lora": "lora"}
    recs = [dataclasses.replace(r, method=swapped[r.method]) for r in pooled()]
    assert stability(records_frame(recs)).status == NOT_CONFIRMED
    worse = [dataclasses.replace(r, main_score=r.main_score - 0.06) if r.method == "prefix_tuning_plus" else r
             for r in pooled()]
    df = records_frame(worse)
    assert plus_beats_prefix(df).status == NOT_CONFIRMED
    assert plus_close_to_lora(df).status == NOT_CONFIRMED  # 0.8103 vs 0.8457: more than 0.02 worse


def test_inconclusive_with_two_seeds_or_a_missing_method():
    two = records_frame(pooled(seeds=(0, 1)))
    assert stability(two).status == INCONCLUSIVE and "fewer than 3 seeds" in stability(two).measured
    one = plus_beats_prefix(records_frame(make_records(seeds=(0,))))  # one pair: no interval to print
    assert one.status == INCONCLUSIVE and "no 95% CI (one pair)" in one.measured and "nan" not in one.measured
    assert "1 matched pair pooled" in one.measured
    no_residual = records_frame(make_records(methods=("prefix_tuning", "lora")))
    v = stability(no_residual)
    assert v.status == INCONCLUSIVE and "no records of residual_prefix" in v.measured
    assert plus_close_to_lora(no_residual).status == INCONCLUSIVE
    one_length = records_frame(make_records(lengths=(5,)))
    assert stability(one_length).status == INCONCLUSIVE


def test_report_text_and_cli(tmp_path, capsys):
    text = report(as_suite(pooled(), "standard"), ["fixture"], {"standard": "three lengths, three seeds"})
    assert text.startswith("# Reproduction report")
    assert text.count("| **confirmed** |") == 3 and text.count("Verdict: **confirmed**") == 3
    assert "`standard` — three lengths, three seeds" in text
    # a claim with no records names its own suite
    text = report(pooled(), ["fixture"], {})
    assert "`claims-ptplus` (not defined in bench/suites.toml yet)" in text
    assert text.count("| **inconclusive** |") == 6  # each claim on each of its suites

    runs = tmp_path / "runs" / "claims-stability"
    for r in make_records(seeds=(0,)):
        append_record(runs, dataclasses.replace(r, suite="claims-stability"))
    out = tmp_path / "REPRODUCTION.md"
    assert main(["reproduction-report", "--runs-root", str(tmp_path / "runs"), "--out", str(out), "--quiet"]) == 0
    written = out.read_text()
    assert written.count("Verdict: **inconclusive**") == 5 and str(runs) in written


def test_published_prefix_tuning_plus_without_a_length_is_compared() -> None:
    """The published form has no prefix axis: it meets prefix_tuning at its best length and
    LoRA directly, matched on seed; neither claim is inconclusive for lack of lengths."""
    import pandas as pd

    from bench.report.verdicts import INCONCLUSIVE, plus_beats_prefix, plus_close_to_lora

    rows = []
    for task in ("glue/sst2", "glue/rte"):
        for seed in range(3):
            rows.append({"method": "prefix_tuning_plus", "prefix_length": None, "score": 0.90 + 0.01 * seed})
            rows.append({"method": "lora", "prefix_length": None, "score": 0.89 + 0.01 * seed})
            for p, base in ((5, 0.70), (20, 0.80)):
                rows.append({"method": "prefix_tuning", "prefix_length": p, "score": base + 0.01 * seed})
            for r in rows[-4:]:
                r["seed"], r["task"] = seed, task
    df = pd.DataFrame([{**r, "backbone": "minilm-l6", "main_score": r.pop("score")} for r in rows])
    beats, close = plus_beats_prefix(df), plus_close_to_lora(df)
    assert beats.status != INCONCLUSIVE and close.status != INCONCLUSIVE
    # against prefix_tuning's best length (P=20): +0.10 on every seed of both tasks
    assert len(beats.table) == 6 and (beats.table["prefix_tuning_plus"] - beats.table["prefix_tuning"]).round(6).eq(0.1).all()



def _write_suite(root, suite: str, seeds=(0, 1, 2)):
    folder = root / suite
    for r in pooled(seeds=seeds):
        append_record(folder, dataclasses.replace(r, suite=suite))
    return folder


def test_report_reads_only_the_claims_suites(tmp_path):
    """A default-suite run beside the claims suites is not read: its rows would make every
    verdict inconclusive (one seed) or mix other settings in."""
    runs = tmp_path / "runs"
    stab = _write_suite(runs, "claims-stability")
    _write_suite(runs, "default", seeds=(0,))
    _write_suite(runs, "smoke", seeds=(0,))
    out = tmp_path / "REPRODUCTION.md"
    assert main(["reproduction-report", "--runs-root", str(runs), "--out", str(out), "--quiet"]) == 0
    written = out.read_text()
    assert str(stab) in written and "default" not in written.split("\n")[2] and "smoke" not in written
    # claims-stability tests the stability claim only; the others have no claims-ptplus records
    assert written.count("| **confirmed** |") == 1 and written.count("| **inconclusive** |") == 4


def test_default_suite_never_writes_the_report(tmp_path, capsys):
    runs = tmp_path / "runs"
    default = _write_suite(runs, "default", seeds=(0,))
    out = tmp_path / "REPRODUCTION.md"
    # only a default run under the root: nothing read, an all-inconclusive report of no records
    assert main(["reproduction-report", "--runs-root", str(runs), "--out", str(out), "--quiet"]) == 0
    assert "(none) (0 finished runs)" in out.read_text()
    out.unlink()
    # named explicitly, the default suite's folder is refused and nothing is written
    assert main(["reproduction-report", "--results", str(default), "--out", str(out), "--quiet"]) == 2
    assert not out.exists() and "reads only the claims suites" in capsys.readouterr().err
    # a folder renamed to look like a claims suite still holds default rows: refused
    disguised = default.rename(runs / "claims-ptplus")
    assert main(["reproduction-report", "--runs-root", str(runs), "--out", str(out), "--quiet"]) == 2
    assert main(["reproduction-report", "--results", str(disguised), "--out", str(out), "--quiet"]) == 2
    assert not out.exists()
