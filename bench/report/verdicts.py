"""``results/REPRODUCTION.md``: each published claim this benchmark tests, the suite that
tests it, what the records measure (with 95% t-intervals) and a verdict.

Verdicts: **confirmed** when the CI of the claimed difference lies on the claimed side *and*
the paired permutation test agrees (p < ``ALPHA``, the mean on the claimed side);
**not confirmed** when the pairs can decide and they do not; **inconclusive** when a method is
missing, fewer than ``MIN_SEEDS`` seeds are matched, or there are too few pairs for the test
to reach p < ``ALPHA`` at all: a two-sided sign-flip test of n pairs cannot go below 2/2**n
(0.25 for 3 pairs, 0.031 for 6), and an interval over 3 points (a bootstrap one, the rule before,
far too narrow) cannot stand alone. Each claim pools its matched pairs over every task, backbone, seed (and, where the claim
allows, prefix length) of the records, and its verdict says how many pairs it rests on.

A method's "best prefix length" is chosen on the held-out slice of the training split when
every run of it has a held-out score, else on the evaluation split, and the verdict says which.

Works on whatever records exist: claims about methods that have not run yet say so. The
command reads the claims suites only (``CLAIM_SUITES``, the suites the claims name): by default
their folders under ``--runs-root``, and it refuses (status 2, nothing written) a folder holding
records of any other suite, so a run of the default suite can never write REPRODUCTION.md.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench.core.config import ConfigError
from bench.core.record_check import problem_summary
from bench.core.records import ResultRecord, read_records, result_rows
from bench.core.suite_file import DEFAULT_SUITES, load_toml
from bench.report.escape import map_text, markdown
from bench.report.failures import length_key
from bench.report.sensitivity import per_seed_spread
from bench.report.stats import fmt_p, paired_test
from bench.report.views import failed_frame, records_frame

MIN_SEEDS = 3
ALPHA = 0.05
CLOSE_MARGIN = 0.02  # "close to LoRA": at most 2 points of the main metric worse
CONFIRMED, NOT_CONFIRMED, INCONCLUSIVE = "confirmed", "not confirmed", "inconclusive"


@dataclass(frozen=True)
class Verdict:
    status: str
    measured: str
    table: pd.DataFrame | None = None


@dataclass(frozen=True)
class Claim:
    id: str
    source: str
    statement: str
    suites: tuple[str, ...]  # each tests the claim on its own records, never pooled with another's
    test: str  # how the records are read, in words
    evaluate: Callable[[pd.DataFrame], Verdict]


def _missing(df: pd.DataFrame, methods: tuple[str, ...]) -> list[str]:
    have = set(df["method"])
    return [m for m in methods if m not in have]


def smallest_p(n: int) -> float:
    """The smallest two-sided p a sign-flip permutation test of ``n`` pairs can give."""
    return 2.0 / 2**n if n > 0 else 1.0


def _pooled_over(rows: pd.DataFrame) -> str:
    parts = []
    for key, word in (("task", "task"), ("backbone", "backbone"), ("prefix_length", "prefix length"),
                      ("seed", "seed")):
        if key in rows and len(rows):
            k = rows[key].nunique(dropna=False)
            parts.append(f"{k} {word}{'s' if k != 1 else ''}")
    return ", ".join(parts)


def _diff_verdict(rows: pd.DataFrame, a: str, b: str, what: str, lower_bound: float = 0.0) -> Verdict:
    """Verdict on mean(a - b) over matched rows: confirmed when its CI lies above ``lower_bound``
    and the paired test of (a - b - lower_bound) against 0 gives p < ALPHA with a positive mean."""
    seeds = rows["seed"].nunique() if len(rows) else 0
    r = paired_test(rows[a].to_numpy(), rows[b].to_numpy())
    shifted = r if lower_bound == 0 else paired_test((rows[a] - lower_bound).to_numpy(), rows[b].to_numpy())
    tested = "difference" if lower_bound == 0 else f"difference + {-lower_bound:g}"
    # one pair has no interval: say so, not "+nan … +nan"
    interval = (f"95% CI {r.ci_low:+.4f} … {r.ci_high:+.4f}" if math.isfinite(r.ci_low) and math.isfinite(r.ci_high)
                else "no 95% CI (one pair)" if r.n == 1 else "no 95% CI")
    measured = (f"{what}: mean {r.mean_diff:+.4f}, {interval}, "
                f"permutation p = {fmt_p(shifted.p_value)} (two-sided, on the {tested}); "
                f"{r.n} matched pair{'s' if r.n != 1 else ''} pooled over {_pooled_over(rows)}")
    if seeds < MIN_SEEDS:
        return Verdict(INCONCLUSIVE, f"{measured}; fewer than {MIN_SEEDS} seeds", rows)
    if smallest_p(r.n) >= ALPHA:
        return Verdict(INCONCLUSIVE, f"{measured}; {r.n} pairs cannot reach p < {ALPHA} "
                                     f"(the smallest p they allow is {smallest_p(r.n):.3f})", rows)
    ci_says = r.ci_low > lower_bound
    test_says = shifted.p_value < ALPHA and shifted.mean_diff > 0
    if ci_says and test_says:
        return Verdict(CONFIRMED, measured, rows)
    if ci_says != test_says:
        measured += "; the CI and the paired test disagree"
    return Verdict(NOT_CONFIRMED, measured, rows)


def stability(df: pd.DataFrame) -> Verdict:
    """Per (task, backbone, seed): spread (max - min over prefix lengths) of prefix_tuning
    minus that of residual_prefix, over the lengths both ran; > 0 means residual is steadier."""
    missing = _missing(df, ("residual_prefix", "prefix_tuning"))
    if missing:
        return Verdict(INCONCLUSIVE, f"no records of {', '.join(missing)}")
    rows = []
    for (task, backbone), g in df.groupby(["task", "backbone"]):
        common = set(g[g["method"] == "residual_prefix"]["prefix_length"].dropna()) & \
            set(g[g["method"] == "prefix_tuning"]["prefix_length"].dropna())
        if len(common) < 2:
            continue
        g = g[g["prefix_length"].isin(common)]
        pt, rp = per_seed_spread(g, "prefix_tuning"), per_seed_spread(g, "residual_prefix")
        for seed in sorted(set(pt.index) & set(rp.index)):
            rows.append({"task": task, "backbone": backbone, "seed": seed, "lengths": len(common),
                         "prefix_tuning": pt[seed], "residual_prefix": rp[seed]})
    table = pd.DataFrame(rows, columns=["task", "backbone", "seed", "lengths", "prefix_tuning", "residual_prefix"])
    if table.empty:
        return Verdict(INCONCLUSIVE, "no (task, backbone, seed) where both methods ran two or more common "
                                     "prefix lengths", table)
    return _diff_verdict(table, "prefix_tuning", "residual_prefix",
                         "spread across prefix lengths, prefix_tuning − residual_prefix")


def _matched(df: pd.DataFrame, a: str, b: str, keys: list[str]) -> pd.DataFrame:
    sa = df[df["method"] == a].groupby(keys)["main_score"].mean().rename(a)
    sb = df[df["method"] == b].groupby(keys)["main_score"].mean().rename(b)
    out = pd.concat([sa, sb], axis=1, join="inner").reset_index()
    if "prefix_length" in out:
        out["prefix_length"] = out["prefix_length"].astype("Int64")  # printed as 5, not 5.0000
    return out


HELD_OUT = "held-out slice"


def at_best_length(df: pd.DataFrame, method: str) -> tuple[pd.DataFrame, str]:
    """``method``'s rows at its best prefix length (by mean over seeds, per task/backbone), and
    the split that chose it: the held-out slice when every sized run has a held-out score (the
    evaluation split is then never used to choose), else the evaluation split. A method without
    a prefix axis (published Prefix-Tuning+, LoRA) keeps all its rows."""
    rows = df[df["method"] == method]
    sized = rows[rows["prefix_length"].notna()]
    if sized.empty:
        return rows, ""
    on_holdout = "holdout_score" in sized and bool(sized["holdout_score"].notna().all())
    by = "holdout_score" if on_holdout else "main_score"
    best = sized.groupby(["task", "backbone", "prefix_length"])[by].mean().reset_index()
    best = best.loc[best.groupby(["task", "backbone"])[by].idxmax(), ["task", "backbone", "prefix_length"]]
    return sized.merge(best, on=["task", "backbone", "prefix_length"]), (
        HELD_OUT if on_holdout else "evaluation split")


def _chosen_on(*splits: str) -> str:
    used = sorted({s for s in splits if s})
    return f"; best prefix length chosen on the {' and '.join(used)}" if used else ""


def plus_beats_prefix(df: pd.DataFrame) -> Verdict:
    """Each method at its best prefix length (the published Prefix-Tuning+ has none),
    matched on (task, backbone, seed)."""
    missing = _missing(df, ("prefix_tuning_plus", "prefix_tuning"))
    if missing:
        return Verdict(INCONCLUSIVE, f"no records of {', '.join(missing)}")
    (plus, on_a), (prefix, on_b) = at_best_length(df, "prefix_tuning_plus"), at_best_length(df, "prefix_tuning")
    rows = _matched(pd.concat([plus, prefix]), "prefix_tuning_plus", "prefix_tuning", ["task", "backbone", "seed"])
    return _diff_verdict(rows, "prefix_tuning_plus", "prefix_tuning",
                         "main metric, prefix_tuning_plus − prefix_tuning (each at its best prefix length"
                         + _chosen_on(on_a, on_b) + ")")


def plus_close_to_lora(df: pd.DataFrame) -> Verdict:
    """prefix_tuning_plus (at its best prefix length where it has one) vs LoRA, matched on
    (task, backbone, seed): non-inferiority within CLOSE_MARGIN."""
    missing = _missing(df, ("prefix_tuning_plus", "lora"))
    if missing:
        return Verdict(INCONCLUSIVE, f"no records of {', '.join(missing)}")
    plus, on = at_best_length(df, "prefix_tuning_plus")
    rows = _matched(pd.concat([plus, df[df["method"] == "lora"]]), "prefix_tuning_plus", "lora",
                    ["task", "backbone", "seed"])
    return _diff_verdict(rows, "prefix_tuning_plus", "lora",
                         f"main metric, prefix_tuning_plus − lora{_chosen_on(on)}; close = CI above "
                         f"−{CLOSE_MARGIN}",
                         lower_bound=-CLOSE_MARGIN)


# The standard suite (bench/suites.toml) tests every claim on searched, early-stopped runs of each
# method at its own published settings; the claims-* suites test one claim each at pinned settings.
STANDARD = "standard"

CLAIMS = (
    Claim("stability", "seed 002",
          "The gated residual prefix (`residual_prefix`) is more stable across prefix lengths than plain "
          "`prefix_tuning`.", ("claims-stability", STANDARD),
          "per (task, backbone, seed), the spread (max − min) of the main metric over the prefix lengths both "
          "methods ran; claim holds when the CI of prefix_tuning's spread minus residual_prefix's is above 0",
          stability),
    Claim("plus-beats-prefix", "seed 001", "`prefix_tuning_plus` beats `prefix_tuning`.", ("claims-ptplus", STANDARD),
          "each method at its best prefix length (the published form has none), matched (task, backbone, "
          "seed); claim holds when the CI of the difference is above 0", plus_beats_prefix),
    Claim("plus-close-to-lora", "seed 001", "`prefix_tuning_plus` is close to `lora`.", ("claims-ptplus", STANDARD),
          f"prefix_tuning_plus (its best prefix length, where it has one) vs lora on matched (task, backbone, "
          f"seed); claim holds "
          f"when the CI of the difference is above −{CLOSE_MARGIN} (at most {CLOSE_MARGIN} worse)",
          plus_close_to_lora),
)


# the suites the claims are tested on: the only records the command reads
CLAIM_SUITES = tuple(dict.fromkeys(s for c in CLAIMS for s in c.suites))


def _by_suite(df: pd.DataFrame, claim: Claim) -> list[tuple[str, pd.DataFrame]]:
    """The claim's suites that have records, each with its own rows (one suite's settings are
    never pooled with another's); with none, every suite of the claim, each without records."""
    have = [(s, df[df["suite"] == s]) for s in claim.suites if "suite" in df and (df["suite"] == s).any()]
    return have or [(s, df.iloc[0:0]) for s in claim.suites]


def report(records: list[ResultRecord], sources: list[str], suites: dict[str, str] | None = None) -> str:
    """The REPRODUCTION.md text. ``suites`` maps suite names to descriptions (those defined)."""
    records = result_rows(records)  # search trials are not results
    df, failed = records_frame(records), failed_frame(records)
    suites = suites or {}
    named = [markdown(f"{r.method}/{r.task}/{r.backbone}/P={length_key(r.prefix_length)}/seed={r.seed}")
             for r in failed.head(20).itertuples()]
    left_out = (f"; {len(failed)} failed run(s) left out: " + ", ".join(named) + (" …" if len(failed) > 20 else "")
                if len(failed) else "")
    lines = ["# Reproduction report", "",
             "Generated by `prefix-bench reproduction-report` from the records in: "
             + (", ".join(f"`{s}`" for s in sources) or "(none)") + f" ({len(df)} finished runs{left_out}).", "",
             f"Verdicts: **confirmed** when the 95% t-interval lies on the claimed side and the paired "
             f"permutation test agrees (p < {ALPHA}); **not confirmed** when the pairs could decide and did not; "
             f"**inconclusive** when a method has no records, fewer than {MIN_SEEDS} seeds are matched, or the "
             f"pairs are too few for the test to reach p < {ALPHA} (n pairs allow no p below 2/2^n). Matched "
             f"pairs are pooled over every task, backbone and seed the records hold.", "",
             "| claim | source | suite | pairs | verdict |", "|---|---|---|---|---|"]
    verdicts = [(c, s, c.evaluate(rows)) for c in CLAIMS for s, rows in _by_suite(df, c)]
    lines += [f"| {c.statement} | {c.source} | `{s}` | {0 if v.table is None else len(v.table)} | **{v.status}** |"
              for c, s, v in verdicts]
    for c, s, v in verdicts:
        suite_note = (f"`{s}` — {markdown(suites[s])}" if s in suites
                      else f"`{s}` (not defined in bench/suites.toml yet)")
        lines += ["", f"## {c.id} ({s}): {c.statement}", "", f"- Source: {c.source}",
                  f"- Suite: {suite_note}; run `prefix-bench run --suite {s}`", f"- Test: {c.test}",
                  f"- Measured: {v.measured}", f"- Verdict: **{v.status}**"]
        if v.table is not None and len(v.table):
            lines += ["", tabulate(map_text(v.table, markdown), headers="keys", tablefmt="github", showindex=False,
                                   floatfmt=".4f")]
    return "\n".join(lines) + "\n"


def default_sources(root: Path) -> list[Path]:
    """The claims suites' records folders under ``root`` (those that exist); no other suite's."""
    return [root / s for s in CLAIM_SUITES if (root / s / "records.jsonl").is_file()]


def check_claims_only(records: list[ResultRecord], source: Path) -> None:
    """Refuse records of a suite that tests no claim (a default or smoke run): its rows would
    turn the verdicts into "inconclusive" or mix other settings into them."""
    others = sorted({r.suite for r in records} - set(CLAIM_SUITES))
    if others:
        raise ConfigError(f"{source} holds records of suite(s) {', '.join(map(repr, others))}; the reproduction "
                          f"report reads only the claims suites ({', '.join(CLAIM_SUITES)})")


def cmd_reproduction_report(args: argparse.Namespace) -> int:
    import sys

    sources = [Path(s) for s in args.results] if args.results else default_sources(Path(args.runs_root))
    records: list[ResultRecord] = []
    for s in sources:
        recs, problems = read_records(s)
        if problems:
            print(problem_summary(problems), file=sys.stderr)
        check_claims_only(recs, s)
        records += recs
    doc = load_toml(args.config or DEFAULT_SUITES)
    suites = {name: spec.get("description", "") for name, spec in doc.get("suites", {}).items()}
    text = report(records, [str(s) for s in sources], suites)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text if not args.quiet else f"wrote {out}")
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduction-report", help="write results/REPRODUCTION.md: each claim and its verdict")
    p.add_argument("--results", action="append",
                   help="records folder of a claims suite to read (repeatable; default: the claims suites' "
                        "folders under --runs-root); a folder with records of another suite exits 2")
    p.add_argument("--runs-root", default="results/runs",
                   help=f"where suites' records folders live; only {', '.join(CLAIM_SUITES)} are read")
    p.add_argument("--config", default=None, help="suite TOML file (default: bench/suites.toml)")
    p.add_argument("--out", default="results/REPRODUCTION.md", help="output file")
    p.add_argument("--quiet", action="store_true", help="do not print the report")
    p.set_defaults(func=cmd_reproduction_report)
