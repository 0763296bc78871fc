"""The answer first: a methods × tables summary, and each prefix method against the
reference methods (LoRA, full fine-tuning) at matched seeds.

The summary shows, per method and (task, backbone), the main metric at the method's best
prefix length with its 95% CI. That length is picked on the evaluation split, so a method
with several lengths is shown at an optimistic point: the cell says at which length and
carries a ``*``. Beside it: the deployed adapter size and the training speed relative to
the first reference method of the same table.

The verdicts pair each (method, prefix length) with a reference method's run of the same
seed (the reference has no prefix length) and test the difference: mean, 95% t-interval
and a paired permutation p-value; fewer than two pairs is no test.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.core.task_facts import Facts, higher_is_better
from bench.report.failures import length_key
from bench.report.stats import MIN_PAIRS, fmt_p, paired_test, summarize
from bench.report.verdicts import HELD_OUT, at_best_length
from bench.report.views import _md, human_bytes

REFERENCES = ("lora", "full_finetune")
PICKED_NOTE = ("* several prefix lengths were run: shown at the best one, picked on the evaluation split "
               "(optimistic; the per-table detail below shows every length).")
ALPHA = 0.05


def _slice_title(task: str, backbone: str) -> str:
    return f"{task} on {backbone}"


def _best_length(g: pd.DataFrame, hib: bool) -> tuple[int | None, pd.DataFrame, bool]:
    """(length, its rows, whether it was picked among several) of the best seed-mean."""
    lengths = {length_key(p) for p in g["prefix_length"]}
    means = {p: g[[length_key(x) == p for x in g["prefix_length"]]]["main_score"].mean() for p in lengths}
    best = (max if hib else min)(means, key=lambda p: (means[p], -(p or 0)))
    return best, g[[length_key(x) == best for x in g["prefix_length"]]], len(lengths) > 1


def summary_table(df: pd.DataFrame, facts: Facts | None = None,
                  order: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """One row per method; per (task, backbone): the score cell, then the deployed size and
    training speed relative to the table's first reference method."""
    facts = facts or {}
    if df.empty:
        return pd.DataFrame()
    slices = list(dict.fromkeys([*(order or []), *sorted(set(zip(df["task"], df["backbone"], strict=True)))]))
    slices = [s for s in slices if ((df["task"] == s[0]) & (df["backbone"] == s[1])).any()]
    rows: dict[str, dict[str, str]] = {}
    for task, backbone in slices:
        g = df[(df["task"] == task) & (df["backbone"] == backbone)]
        metric = next((m for m in g["main_metric"] if m), "score")
        hib = higher_is_better(facts, task, metric)
        title = _slice_title(task, backbone)
        ref = next((r for r in REFERENCES if (g["method"] == r).any()), None)
        ref_speed = g[g["method"] == ref]["train_tokens_per_s"].mean() if ref else math.nan
        for method in sorted(g["method"].unique()):
            length, sel, picked = _best_length(g[g["method"] == method], hib)
            s = summarize(sel["main_score"])
            where = "" if length is None else f" (P={length}{'*' if picked else ''})"
            shown = f"{s.mean:.4f}" + (f" [{s.ci_low:.3f}, {s.ci_high:.3f}]" if s.n > 1 else " (n=1)") + where
            speed = sel["train_tokens_per_s"].mean() / ref_speed if ref_speed and ref_speed > 0 else math.nan
            row = rows.setdefault(method, {"method": method})
            row[f"{title}: {metric}"] = shown
            row[f"{title}: deployed size"] = human_bytes(sel["inference_bytes"].median())
            row[f"{title}: train speed vs {ref or 'reference'}"] = "—" if math.isnan(speed) else f"{speed:.2f}×"
    return pd.DataFrame(list(rows.values())).fillna("")


def versus_references(df: pd.DataFrame, facts: Facts | None = None,
                      order: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Every (method, prefix length) against each reference method of its table, paired by seed."""
    facts = facts or {}
    out = []
    slices = list(dict.fromkeys([*(order or []), *sorted(set(zip(df["task"], df["backbone"], strict=True)))]))
    for task, backbone in slices:
        g = df[(df["task"] == task) & (df["backbone"] == backbone)]
        if g.empty:
            continue
        metric = next((m for m in g["main_metric"] if m), "score")
        hib = higher_is_better(facts, task, metric)
        for ref in (r for r in REFERENCES if (g["method"] == r).any()):
            base = g[g["method"] == ref].groupby("seed")["main_score"].mean()
            for method in sorted(m for m in g["method"].unique() if m not in REFERENCES):
                mine = g[g["method"] == method]
                lengths = sorted({length_key(p) for p in mine["prefix_length"]}, key=lambda p: (p is None, p or 0))
                chosen = []
                for length in lengths:
                    chosen.append(("—" if length is None else str(length),
                                   mine[[length_key(x) == length for x in mine["prefix_length"]]]))
                if len(lengths) > 1:  # the length a user would deploy, chosen without the evaluation split
                    best, on = at_best_length(mine, method)
                    if on == HELD_OUT and not best.empty:
                        chosen.append((f"{length_key(best['prefix_length'].iloc[0])} (best on held-out)", best))
                for shown, sel in chosen:
                    by_seed = sel.groupby("seed")["main_score"].mean()
                    seeds = sorted(set(by_seed.index) & set(base.index))
                    r = paired_test(by_seed[seeds].to_numpy(), base[seeds].to_numpy())
                    out.append({"table": _slice_title(task, backbone), "method": method,
                                "P": shown, "versus": ref, "pairs": r.n,
                                "difference": f"{r.mean_diff:+.4f}" if r.n else "—",
                                "95% CI": f"{r.ci_low:+.4f} … {r.ci_high:+.4f}" if r.tested else f"n<{MIN_PAIRS}, no test",
                                "p": fmt_p(r.p_value) if r.tested else f"n<{MIN_PAIRS}, no test",
                                "verdict": _verdict(r, hib, method, ref)})
    return pd.DataFrame(out, columns=["table", "method", "P", "versus", "pairs", "difference", "95% CI", "p",
                                      "verdict"])


def _verdict(r, hib: bool, method: str, ref: str) -> str:
    if not r.n:
        return "no matched seeds"
    if not r.tested:
        return f"n<{MIN_PAIRS}: no verdict"
    floor = 2 / 2**r.n  # the smallest two-sided sign-flip p-value n pairs allow
    if floor >= ALPHA:
        return f"inconclusive: {r.n} pairs allow no p below {floor:.3g}"
    excludes_zero = r.ci_low > 0 or r.ci_high < 0
    if excludes_zero != (r.p_value < ALPHA):
        return "inconclusive: the CI and the test disagree"
    if not excludes_zero:
        return "no significant difference"
    better = (r.mean_diff > 0) == hib
    return f"{method} {'better' if better else 'worse'} than {ref}"



SUMMARY_TITLE = "Summary: every method on every table"
VERDICTS_TITLE = "Prefix methods against LoRA and full fine-tuning (matched seeds)"


def summary_markdown(overview: pd.DataFrame, verdicts: pd.DataFrame) -> str:
    """The top of leaderboard.md: the summary, then the verdicts ("" without rows)."""
    if overview.empty:
        return ""
    parts = [f"# {SUMMARY_TITLE}", _md(overview)]
    if overview.astype(str).apply(lambda c: c.str.contains(r"\*\)", regex=True)).any().any():
        parts.append(PICKED_NOTE)
    if len(verdicts):
        parts += [f"## {VERDICTS_TITLE}", _md(verdicts),
                  f"Paired by seed; 95% t-interval and paired permutation p-value; a verdict needs the CI to "
                  f"exclude 0 and p < {ALPHA} (n pairs allow no p below 2/2^n: 0.25 for 3 seeds, so a verdict "
                  f"needs 6 pairs). \"best on held-out\": the prefix length with the best held-out score (a slice "
                  f"of the training split), the length one would deploy without looking at the evaluation split."]
    return "\n\n".join(parts) + "\n"
