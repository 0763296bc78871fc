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


def test_fixture_confirms_every_claim():
    df = records_frame(make_records())
    for check in (stability, plus_beats_prefix, plus_close_to_lora):
        assert check(df).status == CONFIRMED, check.__name__
    v = stability(df)
    assert "+0.0560" in v.measured and len(v.table) == 3  # 0.06 - 0.004 on each of 3 seeds


def test_reversed_data_is_not_confirmed():
    swapped = {"prefix_tuning": "residual_prefix", "residual_prefix": "prefix_tuning",
               "prefix_tuning_plus": "prefix_tuning_plus", "lora": "lora"}
    recs = [dataclasses.replace(r, method=swapped[r.method]) for r in make_records()]
    assert stability(records_frame(recs)).status == NOT_CONFIRMED
    worse = [dataclasses.replace(r, main_score=r.main_score - 0.06) if r.method == "prefix_tuning_plus" else r
             for r in make_records()]
    df = records_frame(worse)
    assert plus_beats_prefix(df).status == NOT_CONFIRMED
    assert plus_close_to_lora(df).status == NOT_CONFIRMED  # 0.8103 vs 0.8457: more than 0.02 worse


def test_inconclusive_with_two_seeds_or_a_missing_method():
    two = records_frame(make_records(seeds=(0, 1)))
    assert stability(two).status == INCONCLUSIVE and "fewer than 3 seeds" in stability(two).measured
    no_residual = records_frame(make_records(methods=("prefix_tuning", "lora")))
    v = stability(no_residual)
    assert v.status == INCONCLUSIVE and "no records of residual_prefix" in v.measured
    assert plus_close_to_lora(no_residual).status == INCONCLUSIVE
    one_length = records_frame(make_records(lengths=(5,)))
    assert stability(one_length).status == INCONCLUSIVE


def test_report_text_and_cli(tmp_path, capsys):
    text = report(make_records(), ["fixture"], {"claims-stability": "three lengths, three seeds"})
    assert text.startswith("# Reproduction report")
    assert text.count("| **confirmed** |") == 3 and text.count("Verdict: **confirmed**") == 3
    assert "`claims-stability` — three lengths, three seeds" in text
    assert "`claims-ptplus` (not defined in bench/suites.toml yet)" in text

    runs = tmp_path / "runs" / "claims-stability"
    for r in make_records(seeds=(0,)):
        append_record(runs, dataclasses.replace(r, suite="claims-stability"))
    out = tmp_path / "REPRODUCTION.md"
    assert main(["reproduction-report", "--runs-root", str(tmp_path / "runs"), "--out", str(out), "--quiet"]) == 0
    written = out.read_text()
    assert written.count("Verdict: **inconclusive**") == 3 and str(runs) in written


def test_published_prefix_tuning_plus_without_a_length_is_compared() -> None:
    """The published form has no prefix axis: it meets prefix_tuning at its best length and
    LoRA directly, matched on seed; neither claim is inconclusive for lack of lengths."""
    import pandas as pd

    from bench.report.verdicts import INCONCLUSIVE, plus_beats_prefix, plus_close_to_lora

    rows = []
    for seed in range(3):
        rows.append({"method": "prefix_tuning_plus", "prefix_length": None, "score": 0.90 + 0.01 * seed})
        rows.append({"method": "lora", "prefix_length": None, "score": 0.89 + 0.01 * seed})
        for p, base in ((5, 0.70), (20, 0.80)):
            rows.append({"method": "prefix_tuning", "prefix_length": p, "score": base + 0.01 * seed})
        for r in rows[-4:]:
            r["seed"] = seed
    df = pd.DataFrame([{**r, "task": "glue/sst2", "backbone": "minilm-l6", "main_score": r.pop("score")}
                       for r in rows])
    beats, close = plus_beats_prefix(df), plus_close_to_lora(df)
    assert beats.status != INCONCLUSIVE and close.status != INCONCLUSIVE
    # against prefix_tuning's best length (P=20): +0.10 on every seed
    assert len(beats.table) == 3 and (beats.table["prefix_tuning_plus"] - beats.table["prefix_tuning"]).round(6).eq(0.1).all()


def _write_suite(root, suite: str, seeds=(0, 1, 2)):
    folder = root / suite
    for r in make_records(seeds=seeds):
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
    assert written.count("| **confirmed** |") == 3  # 9 runs per method, all of claims-stability


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
