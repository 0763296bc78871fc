"""PNG plots with matplotlib's Agg backend (no display; safe in CI and on servers).

Names come from records: plots draw with mathtext off (``_plain_text``), and every text
taken from a record goes through ``escape.plot_label`` (control characters flattened, a
leading ``_`` kept in the legend)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from bench.report import pareto  # noqa: E402
from bench.report.escape import plot_label  # noqa: E402


def _plain_text(draw: Callable[..., Path]) -> Callable[..., Path]:
    """Draw with mathtext off: method, task and metric names come from records (untrusted),
    and a name holding '$...$' would be parsed as TeX, which raises on a bad one."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs) -> Path:
        with plt.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)
    return wrapper


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # fixed metadata: the same data renders to the same bytes (no timestamp in the PNG)
    fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


@_plain_text
def sensitivity_plot(curves: pd.DataFrame, flat: pd.DataFrame, title: str, metric: str, path: Path) -> Path:
    """Metric vs prefix length per method, 95% CI as error bars; ``flat`` (method, mean)
    rows (methods with no prefix axis) drawn as dashed horizontal references."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, g in curves.groupby("method", sort=True):
        g = g.sort_values("prefix_length")
        err = [(g["mean"] - g["ci_low"]).clip(lower=0), (g["ci_high"] - g["mean"]).clip(lower=0)]
        ax.errorbar(g["prefix_length"], g["mean"], yerr=err, marker="o", capsize=3, label=plot_label(method))
    for _, row in flat.iterrows():
        ax.axhline(row["mean"], linestyle="--", linewidth=1, color="grey")
        ax.annotate(plot_label(f"{row['method']} (no prefix)"), (1.0, row["mean"]), xycoords=("axes fraction", "data"),
                    ha="right", va="bottom", fontsize=8, color="grey")
    lengths = sorted(curves["prefix_length"].unique())
    if len(lengths) and lengths[-1] / max(lengths[0], 1) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(x) for x in lengths])
    ax.set_xlabel("prefix length")
    ax.set_ylabel(plot_label(f"{metric} (mean, 95% CI over seeds)"))
    ax.set_title(plot_label(title), fontsize=10)
    if len(curves):
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


@_plain_text
def pareto_plot(table: pd.DataFrame, title: str, metric: str, path: Path) -> Path:
    """One panel per cost axis; frontier points filled and joined, the rest hollow."""
    table = table[table["score"].notna()]  # runs without a score have no place on these axes
    fig, axes = plt.subplots(1, len(pareto.AXES), figsize=(5.0 * len(pareto.AXES), 4.0))
    for ax, axis in zip(axes, pareto.AXES, strict=True):
        on = table[f"pareto_{axis.column}"]
        for i, (method, g) in enumerate(table.groupby("method", sort=True)):
            color = f"C{i % 10}"
            ax.scatter(g[axis.column] / axis.scale, g["score"], facecolors="none", edgecolors=color, label=plot_label(method))
            front = g[on[g.index]]
            ax.scatter(front[axis.column] / axis.scale, front["score"], color=color)
            for _, r in g.iterrows():
                tag = "" if pd.isna(r["prefix_length"]) else f"P={int(r['prefix_length'])}"
                ax.annotate(tag, (r[axis.column] / axis.scale, r["score"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        f = table[on].sort_values(axis.column)
        ax.plot(f[axis.column] / axis.scale, f["score"], color="black", linewidth=0.8, alpha=0.6)
        if axis.log and len(table) and (table[axis.column] > 0).all():
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap at 2-3 decades
        ax.set_xlabel(axis.label + (" (higher is better)" if axis.higher_is_better else " (lower is better)"))
        ax.set_ylabel(plot_label(metric))
        ax.grid(alpha=0.3)
    if len(table):
        axes[0].legend(fontsize=8)
    fig.suptitle(plot_label(title) + " — filled: Pareto frontier", fontsize=10)
    return _save(fig, path)
