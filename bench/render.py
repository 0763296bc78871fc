"""Records -> leaderboard tables (markdown via tabulate, CSV). A pure step: never trains.

One table per task (and backbone): rows are methods, columns prefix lengths, cells the
main metric's mean ± std over seeds with n; then trainable parameters, adapter size,
throughput and peak memory (means over the method's cells).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench.records import ResultRecord, latest_by_cell

NO_PREFIX = "no prefix"


def records_frame(records: list[ResultRecord]) -> pd.DataFrame:
    rows = [r for r in latest_by_cell(records).values() if r.status == "ok"]
    cols = ["method", "task", "backbone", "prefix_length", "seed", "main_metric", "main_score", "collapsed",
            "trainable_params", "adapter_bytes", "train_tokens_per_s", "eval_tokens_per_s",
            "peak_memory_bytes"]
    return pd.DataFrame([{c: getattr(r, c) for c in cols} for r in rows], columns=cols)


def _fmt_score(values: pd.Series, collapsed: pd.Series) -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "—"
    n = len(vals)
    mean = sum(vals) / n
    std = pd.Series(vals).std(ddof=1) if n > 1 else 0.0
    mark = "†" if collapsed.any() else ""
    return f"{mean:.4f} ± {std:.4f} (n={n}){mark}"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """One task/backbone's records -> the leaderboard frame (strings, ready to print)."""
    lengths = sorted({int(p) for p in df["prefix_length"].dropna()})
    has_none = df["prefix_length"].isna().any()
    columns = [f"P={p}" for p in lengths] + ([NO_PREFIX] if has_none else [])
    out = []
    for method, g in sorted(df.groupby("method"), key=lambda kv: kv[0]):
        row = {"method": method}
        for p in lengths:
            sel = g[g["prefix_length"] == p]
            row[f"P={p}"] = _fmt_score(sel["main_score"], sel["collapsed"]) if len(sel) else ""
        if has_none:
            sel = g[g["prefix_length"].isna()]
            row[NO_PREFIX] = _fmt_score(sel["main_score"], sel["collapsed"]) if len(sel) else ""
        row["trainable params"] = f"{int(g['trainable_params'].median()):,}"
        row["adapter size"] = _human_bytes(g["adapter_bytes"].median())
        row["train tok/s"] = f"{g['train_tokens_per_s'].mean():.0f}"
        row["eval tok/s"] = f"{g['eval_tokens_per_s'].mean():.0f}"
        row["peak memory"] = _human_bytes(g["peak_memory_bytes"].max())
        out.append(row)
    return pd.DataFrame(out, columns=["method", *columns, "trainable params", "adapter size", "train tok/s",
                                      "eval tok/s", "peak memory"])


def render(records: list[ResultRecord], out_dir: Path) -> list[Path]:
    """Write one markdown and one CSV table per (task, backbone); returns the paths."""
    df = records_frame(records)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for (task, backbone), g in sorted(df.groupby(["task", "backbone"]), key=lambda kv: kv[0]):
        metric = g["main_metric"].iloc[0]
        table = leaderboard(g)
        stem = f"{task.replace('/', '_')}__{backbone}"
        md = out_dir / f"{stem}.md"
        md.write_text(
            f"## {task} on {backbone}: {metric} (mean ± std over seeds)\n\n"
            + tabulate(table, headers="keys", tablefmt="github", showindex=False)
            + "\n\n† a run collapsed to predicting one class.\n", encoding="utf-8")
        csv = out_dir / f"{stem}.csv"
        table.to_csv(csv, index=False)
        written += [md, csv]
    return written
