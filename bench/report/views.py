"""One (task, backbone) slice of the records as tables: scores, costs, paired tests,
prefix-length sensitivity and Pareto views, and its markdown. Pure: no file is written here."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench.core.record import PROCESS_PEAK
from bench.core.records import ResultRecord, latest_by_cell, result_rows
from bench.core.safe_names import unique_stems
from bench.core.task_facts import Facts, corpus_metrics, higher_is_better
from bench.report import context, failures, instability, pareto, sensitivity, subsets
from bench.report.escape import map_text, markdown, url_path
from bench.report.failures import Note, length_key
from bench.report.stats import MIN_PAIRS, Summary, compare_methods, fmt_p, summarize

NO_PREFIX = "no prefix"
NO_TEST = f"n<{MIN_PAIRS}, no test"
COST_COLUMNS = ["trainable params", "deployed size", "train tok/s", "eval tok/s", "peak memory"]
COLLAPSE_NOTE = "† a run collapsed to predicting one class."
OLDER_NOTE = ("{n} older row(s) left out: where a cell has runs of different options, code or data, "
              "only the newest are averaged (`run` re-runs stale cells).")
# Where the OS gives no per-cell CPU peak (bench/measure/memory.py), the process's high-water mark
# carries over from earlier cells: say so rather than print it as this method's own peak.
MEMORY_NOTE = ("‡ peak RSS of the whole process so far, not reset per cell (records made before "
               "bench/measure/memory.py reset it, or an OS without /proc/self/clear_refs): an upper bound that "
               "includes earlier cells; `--executor subprocess` measures each cell alone.")


def experiment_key(r: ResultRecord) -> str:
    """What rows must share to be averaged as seeds of one experiment: the resolved config
    less the seed (options and code identity) and the data it ran on."""
    config = {k: v for k, v in r.config.items() if k != "seed"}
    return json.dumps([config, r.data_fingerprint], sort_keys=True, default=str)


def newest_experiments(records: list[ResultRecord]) -> tuple[list[ResultRecord], Counter[tuple[str, str]]]:
    """The ok rows to aggregate: each cell's newest row, and per table cell (method, task,
    backbone, prefix length) only those of the experiment appended last, so rows of
    different options, code or data are never averaged. Also: how many older rows were
    left out, per (task, backbone)."""
    records = result_rows(records)  # search trials are never a table's numbers
    latest = latest_by_cell(records)
    # usable: ok with a finite main score (bench/core/outcome.py); file order: oldest first
    rows = [r for r in records if failures.failure(r) is None and latest[r.cell_id] is r]
    newest = {(r.method, r.task, r.backbone, r.prefix_length): experiment_key(r) for r in rows}
    kept, left_out = [], Counter()
    for r in rows:
        if experiment_key(r) == newest[r.method, r.task, r.backbone, r.prefix_length]:
            kept.append(r)
        else:
            left_out[r.task, r.backbone] += 1
    return kept, left_out


def records_frame(records: list[ResultRecord]) -> pd.DataFrame:
    """One row per usable run to aggregate (``newest_experiments``); ``attrs["left_out"]``
    counts the older rows left out per (task, backbone). Failed runs are in ``failed_frame``."""
    rows, left_out = newest_experiments(records)
    cols = ["method", "task", "backbone", "prefix_length", "seed", "main_metric", "main_score", "collapsed",
            "trainable_params", "adapter_bytes", "inference_params", "inference_bytes", "train_tokens_per_s",
            "eval_tokens_per_s", "peak_memory_bytes", "peak_memory_kind", "eval_examples", "eval_split_size",
            "holdout_score", "suite"]
    df = pd.DataFrame([{**{c: getattr(r, c) for c in cols},
                        "weights": str(r.config.get("weights", "")) if isinstance(r.config, dict) else ""}
                       for r in rows], columns=[*cols, "weights"])
    for c in ("main_score", "inference_params", "inference_bytes", "holdout_score"):  # None (unknown) -> NaN
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df.attrs["left_out"] = dict(left_out)
    return df


def failed_frame(records: list[ResultRecord]) -> pd.DataFrame:
    """The failed runs the tables show beside ``records_frame``'s (``failures.current``)."""
    return failures.failures_frame(failures.current(records, newest_experiments(records)[0]))


def fmt_summary(s: Summary, collapsed: bool = False) -> str:
    """Mean ± std (n, CI); one run is its value alone: it has no spread and no interval."""
    if s.n == 0:
        return "—"
    mark = "†" if collapsed else ""
    if s.n == 1:
        return f"{s.mean:.4f} (n=1){mark}"
    return f"{s.mean:.4f} ± {s.std:.4f} (n={s.n}, CI {s.ci_low:.3f}–{s.ci_high:.3f}){mark}"


def human_bytes(n: float) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _length_columns(df: pd.DataFrame, notes: dict[tuple[str, int | None], Note] | None = None
                    ) -> tuple[list[int], bool]:
    noted = [p for _, p in notes or {}]
    lengths = {int(p) for p in df["prefix_length"].dropna()} | {p for p in noted if p is not None}
    return sorted(lengths), bool(df["prefix_length"].isna().any()) or None in noted


def score_table(df: pd.DataFrame, notes: dict[tuple[str, int | None], Note] | None = None) -> pd.DataFrame:
    """Numbers behind the leaderboard: one row per (method, prefix length or none), also
    for cells whose runs all failed (n = 0); ``failed_runs`` and ``errors`` say which failed."""
    notes = notes or {}
    rows = []
    key = df["prefix_length"].astype(object).where(df["prefix_length"].notna(), None)
    for (method, length), g in df.groupby([df["method"], key], dropna=False):
        s = summarize(g["main_score"])
        rows.append({"method": method, "prefix_length": length_key(length),
                     "mean": s.mean, "std": s.std, "n": s.n, "ci_low": s.ci_low, "ci_high": s.ci_high,
                     "collapsed_runs": int(g["collapsed"].sum())})
    seen = {(r["method"], r["prefix_length"]) for r in rows}
    rows += [{"method": m, "prefix_length": p, "n": 0, "collapsed_runs": 0} for m, p in notes if (m, p) not in seen]
    for r in rows:
        note = notes.get((r["method"], r["prefix_length"]))
        r["failed_runs"], r["errors"] = (note.failed, note.errors) if note else (0, "")
    out = pd.DataFrame(rows, columns=["method", "prefix_length", "mean", "std", "n", "ci_low", "ci_high",
                                      "collapsed_runs", "failed_runs", "errors"])
    return out.sort_values(["method", "prefix_length"], na_position="last", ignore_index=True)


def leaderboard(df: pd.DataFrame, notes: dict[tuple[str, int | None], Note] | None = None) -> pd.DataFrame:
    """One task/backbone's records -> the leaderboard frame (strings, ready to print).
    ``notes`` (``failures.notes``) mark the cells with failed runs; a method whose runs all
    failed still gets its row."""
    notes = notes or {}
    lengths, has_none = _length_columns(df, notes)
    columns = [f"P={p}" for p in lengths] + ([NO_PREFIX] if has_none else [])
    speed = df.groupby("method")["train_tokens_per_s"].agg(["mean", "std", "count"]) if len(df) else None
    out = []
    for method in sorted(set(df["method"]) | {m for m, _ in notes}):
        g = df[df["method"] == method]
        row = {"method": method}
        for p in lengths:
            sel = g[g["prefix_length"] == p]
            shown = subsets.mark(fmt_summary(summarize(sel["main_score"]), sel["collapsed"].any()), sel) \
                if len(sel) else ""
            row[f"P={p}"] = notes[(method, p)].cell(shown) if (method, p) in notes else shown
        if has_none:
            sel = g[g["prefix_length"].isna()]
            shown = subsets.mark(fmt_summary(summarize(sel["main_score"]), sel["collapsed"].any()), sel) \
                if len(sel) else ""
            row[NO_PREFIX] = notes[(method, None)].cell(shown) if (method, None) in notes else shown
        if g.empty:  # every run failed: no cost was measured
            out.append(row | dict.fromkeys(COST_COLUMNS, "—"))
            continue
        row["trainable params"] = f"{int(g['trainable_params'].median()):,}"
        row["deployed size"] = human_bytes(g["inference_bytes"].median())
        row["train tok/s"] = _speed(method, speed)
        row["eval tok/s"] = f"{g['eval_tokens_per_s'].mean():.0f}"
        row["peak memory"] = human_bytes(g["peak_memory_bytes"].max()) + (
            "‡" if (g["peak_memory_kind"] == PROCESS_PEAK).any() else "")
        out.append(row)
    return pd.DataFrame(out, columns=["method", *columns, *COST_COLUMNS])


NOISY = "~"
NOISY_NOTE = (f"{NOISY} training throughput whose spread over its runs (seeds, prefix lengths) is larger than "
              "its gap to the nearest method's: the speed ranking there is noise (a shared machine moves "
              "throughput a lot).")


def _speed(method: str, speed: pd.DataFrame | None) -> str:
    """Mean train tok/s over the method's runs (seeds and lengths), ± their std with two or more,
    and the noise mark."""
    if speed is None or method not in speed.index:
        return "—"
    mean, std, n = speed.loc[method, "mean"], speed.loc[method, "std"], speed.loc[method, "count"]
    if n < 2 or pd.isna(std):
        return f"{mean:.0f}"
    others = speed.drop(index=method)["mean"]
    gap = (others - mean).abs().min() if len(others) else math.inf
    return f"{mean:.0f} ± {std:.0f}" + (NOISY if std > gap else "")


def paired_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every pair of methods with runs on the same (prefix length, seed): A − B, its 95%
    t-interval and a paired permutation p-value."""
    rows = []
    for a, b in itertools.combinations(sorted(df["method"].unique()), 2):
        r = compare_methods(df, a, b)
        if r.n:
            rows.append({"method_a": a, "method_b": b, "pairs": r.n, "mean_diff": r.mean_diff,
                         "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": r.p_value})
    return pd.DataFrame(rows, columns=["method_a", "method_b", "pairs", "mean_diff", "ci_low", "ci_high",
                                       "p_value"])


@dataclass
class SliceView:
    """Everything rendered for one (task, backbone): frames for every output format."""

    task: str
    backbone: str
    metric: str
    higher_is_better: bool
    board: pd.DataFrame
    scores: pd.DataFrame
    paired: pd.DataFrame
    sens_curve: pd.DataFrame
    sens_scores: pd.DataFrame
    pareto: pd.DataFrame
    collapsed: bool
    images: dict[str, Path] = field(default_factory=dict)
    left_out: int = 0  # older rows not averaged in (newest_experiments)
    file_stem: str = ""  # set by build_views: distinct per slice, safe as a file name
    notes: dict[tuple[str, int | None], Note] = field(default_factory=dict)  # cells with failed runs
    subset_note: str = ""  # bench/report/subsets.py: rows scored on part of the evaluation split
    # bench/report/instability.py: cells that move between machines or seeds by more than their noise
    unstable: list[str] = field(default_factory=list)
    context: str = ""  # bench/report/context.py: what made the rows, and the budget they trained under
    banner: str = ""  # random-weight backbones

    @property
    def stem(self) -> str:
        # task and backbone come from records, which are untrusted: never a path as they are
        return self.file_stem or unique_stems([(self.task, self.backbone)])[(self.task, self.backbone)]

    @property
    def title(self) -> str:
        return f"{self.task} on {self.backbone}"


def build_views(records: list[ResultRecord], facts: Facts | None = None,
                order: list[tuple[str, str]] | None = None) -> list[SliceView]:
    """One view per (task, backbone) with a run, ok or failed: a slice whose runs all
    failed still gets its table, every cell marked failed. ``facts`` gives each metric's
    direction (bench/core/task_facts.py; a task not in it: higher is better). Views follow
    ``order`` (the suite's), then any other slice alphabetically."""
    facts = facts or {}
    df, bad = records_frame(records), failed_frame(records)
    kept = newest_experiments(records)[0]
    left_out = df.attrs["left_out"]
    slices = sorted(set(zip(df["task"], df["backbone"], strict=True)) |
                    set(zip(bad["task"], bad["backbone"], strict=True)), key=lambda tb: (str(tb[0]), str(tb[1])))
    rank = {s: i for i, s in enumerate(order or [])}
    slices.sort(key=lambda s: rank.get(s, len(rank)))  # stable: the rest stay alphabetical
    views = []
    for task, backbone in slices:
        g = df[(df["task"] == task) & (df["backbone"] == backbone)]
        f = bad[(bad["task"] == task) & (bad["backbone"] == backbone)]
        # failed_record leaves main_metric empty; a NaN row or an ok row names it
        metric = next((m for m in (*g["main_metric"], *f["main_metric"]) if m), "main metric")
        hib = higher_is_better(facts, task, metric)
        notes = failures.notes(g, f)
        unstable = instability.find([r for r in records if r.task == task and r.backbone == backbone], g)
        board = instability.mark_board(leaderboard(g, notes), unstable)
        views.append(SliceView(task, backbone, metric, hib, board, score_table(g, notes),
                               paired_table(g), sensitivity.curves(g), sensitivity.scores(g, hib),
                               pareto.table(g, hib), bool(g["collapsed"].any()),
                               left_out=left_out.get((task, backbone), 0), notes=notes,
                               subset_note=subsets.note(g, corpus_metrics(facts, task)),
                               unstable=[u.text for u in unstable],
                               context=" ".join(filter(None, (
                                   context.context_line(mine := [r for r in kept if (r.task, r.backbone) == (task, backbone)]),
                                   context.budget_line(mine)))),
                               banner=context.random_banner(mine or [r for r in records if (r.task, r.backbone) == (task, backbone)])))
    stems = unique_stems((v.task, v.backbone) for v in views)
    for v in views:
        v.file_stem = stems[(v.task, v.backbone)]
    return views


def _md(frame: pd.DataFrame) -> str:
    # numbers arrive formatted as the reader should see them; tabulate must not re-parse them
    return tabulate(map_text(frame, markdown), headers="keys", tablefmt="github", showindex=False,
                    disable_numparse=True)


def paired_display(p: pd.DataFrame) -> pd.DataFrame:
    """One pair is a difference, not a test: its CI and p-value read "n<2, no test"."""
    tested = [n >= MIN_PAIRS for n in p["pairs"]]
    return pd.DataFrame({
        "A": p["method_a"], "B": p["method_b"], "pairs": p["pairs"],
        "A − B": [f"{d:+.4f}" for d in p["mean_diff"]],
        "95% CI": [f"{lo:+.4f} … {hi:+.4f}" if ok else NO_TEST
                   for lo, hi, ok in zip(p["ci_low"], p["ci_high"], tested, strict=True)],
        "p": [fmt_p(v) if ok else NO_TEST for v, ok in zip(p["p_value"], tested, strict=True)]})


def sensitivity_display(s: pd.DataFrame, notes: dict[tuple[str, int | None], Note] | None = None) -> pd.DataFrame:
    """A method run at one length has no spread: shown as "—", not nan. With ``notes``, a
    method with failed runs at some prefix length says so beside its count of lengths, and
    one whose prefix runs all failed gets a row of its own."""
    def num(v: float) -> str:
        return "—" if pd.isna(v) else f"{v:.4f}"

    def ci(row: pd.Series) -> str:
        n = row["seeds_all_lengths"]
        if n == 0:
            return "— (one length)" if row["lengths"] < 2 else "— (no seed ran every length)"
        if n < 2:
            return f"{row['seed_spread_mean']:.4f} (n={n})"
        return (f"{row['seed_spread_mean']:.4f} (n={n}, CI "
                f"{row['seed_spread_ci_low']:.3f}–{row['seed_spread_ci_high']:.3f})")
    marks: dict[str, list[str]] = {}
    for (method, length), note in sorted((notes or {}).items(), key=lambda kv: kv[1].number):
        if length is not None:
            marks.setdefault(method, []).append(note.mark)

    def lengths(method: str, n: int) -> str:
        return f"{n}; failed {', '.join(marks[method])}" if method in marks else str(n)
    shown = pd.DataFrame({
        "method": s["method"], "lengths": [lengths(m, n) for m, n in zip(s["method"], s["lengths"], strict=True)],
        "best P": s["best_length"], "best": s["best_mean"].map(num), "worst": s["worst_mean"].map(num),
        "spread (max−min)": s["spread"].map(num),
        "std across lengths": s["std_across_lengths"].map(num),
        "per-seed spread": [ci(r) for _, r in s.iterrows()]})
    lost = [m for m in marks if m not in set(s["method"])]
    if not lost:
        return shown
    rows = pd.DataFrame([dict.fromkeys(shown.columns, "—") | {"method": m, "lengths": lengths(m, 0)} for m in lost])
    return pd.concat([shown, rows], ignore_index=True)


def pareto_display(p: pd.DataFrame, notes: dict[tuple[str, int | None], Note] | None = None) -> pd.DataFrame:
    """The Pareto points; with ``notes``, a configuration with failed runs is marked and
    one whose runs all failed gets a row of its own (it has no point on the frontier)."""
    notes = notes or {}
    star = {True: "★", False: ""}
    keys = [(m, length_key(x)) for m, x in zip(p["method"], p["prefix_length"], strict=True)]
    scores = ["—" if n == 0 else f"{s:.4f} (n={n})" for s, n in zip(p["score"], p["n"], strict=True)]
    shown = pd.DataFrame({
        "method": p["method"], "P": [NO_PREFIX if x is None else str(x) for _, x in keys],
        "score": [notes[k].cell(s) if k in notes else s for k, s in zip(keys, scores, strict=True)],
        "deployed size": p["inference_bytes"].map(human_bytes),
        "frontier: size": p["pareto_inference_bytes"].map(star),
        "train tok/s": p["train_tokens_per_s"].map(lambda v: f"{v:.0f}"),
        "frontier: tok/s": p["pareto_train_tokens_per_s"].map(star),
        "peak memory": p["peak_memory_bytes"].map(human_bytes),
        "frontier: memory": p["pareto_peak_memory_bytes"].map(star)})
    lost = [n for k, n in sorted(notes.items(), key=lambda kv: kv[1].number) if k not in keys]
    if not lost:
        return shown
    rows = pd.DataFrame([{c: "—" for c in shown.columns} | {
        "method": n.method, "P": NO_PREFIX if n.prefix_length is None else str(n.prefix_length), "score": n.cell(""),
        "frontier: size": "", "frontier: tok/s": "", "frontier: memory": ""} for n in lost])
    return pd.concat([shown, rows], ignore_index=True)


def slice_markdown(v: SliceView, images: bool = True) -> str:
    direction = "higher" if v.higher_is_better else "lower"
    parts = [f"## {markdown(v.title)}: {markdown(v.metric)} (mean ± std over seeds, 95% t-interval; "
             f"{direction} is better)"] + [f"**{markdown(v.banner)}**"] * bool(v.banner) + \
            [markdown(v.context)] * bool(v.context) + [_md(v.board)]
    if v.notes:
        parts.append("Failed runs (left out of every statistic):\n\n" + "\n".join(
            f"- {markdown(n.text)}" for n in sorted(v.notes.values(), key=lambda n: n.number)))
    if v.board["train tok/s"].astype(str).str.endswith(NOISY).any():
        parts.append(NOISY_NOTE)
    if v.unstable:
        parts.append("Unstable cells:\n\n" + "\n".join(f"- {markdown(t)}" for t in v.unstable))
    if v.collapsed:
        parts.append(COLLAPSE_NOTE)
    if v.subset_note:
        parts.append(markdown(v.subset_note))
    if v.board["peak memory"].str.endswith("‡").any():
        parts.append(MEMORY_NOTE)
    if v.left_out:
        parts.append(OLDER_NOTE.format(n=v.left_out))
    if len(v.paired):
        parts += ["### Paired comparisons (matched prefix length and seed; permutation p-value)",
                  _md(paired_display(v.paired))]
    if len(v.sens_scores) or any(p is not None for _, p in v.notes):
        parts += ["### Prefix-length sensitivity (lower spread = more stable)",
                  _md(sensitivity_display(v.sens_scores, v.notes))]
        if images and "sensitivity" in v.images:
            parts.append(f"![{markdown(v.metric)} vs prefix length]({url_path(v.images['sensitivity'].name)})")
    if len(v.pareto) or v.notes:
        parts += ["### Pareto views (★ = on the frontier)", _md(pareto_display(v.pareto, v.notes))]
        if images and "pareto" in v.images:
            parts.append(f"![Pareto views]({url_path(v.images['pareto'].name)})")
    return "\n\n".join(parts) + "\n"
