"""The report of `nox -s perf` (bench/perf.py): ratios, targets and the markdown table.

Kept apart from the measuring code so that changing how results read cannot touch how
they are taken."""

from __future__ import annotations

import statistics
from typing import Any

from tabulate import tabulate

from bench.measure.flops import StepFlops


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


PAIRS = (("ours_proj", "peft_proj"), ("ours_noproj", "peft_noproj"), ("ours_proj", "base"), ("ours_noproj", "base"),
         ("ours_proj", "ours_proj_fp32"))
TARGETS = (  # (what, phase, arm, reference, kind, bound): rate ratios >= bound, memory <= bound
    ("training step tokens/s at the default precision >= 1.8x fp32", "train", "ours_proj", "ours_proj_fp32",
     "rate", 1.8),
    ("training step tokens/s >= 1.05x PEFT prefix tuning", "train", "ours_proj", "peft_proj", "rate", 1.05),
    ("training step tokens/s >= 1.05x PEFT prefix tuning", "train", "ours_noproj", "peft_noproj", "rate", 1.05),
    ("training peak memory <= 1.0x PEFT prefix tuning", "memory", "ours_proj", "peft_proj", "memory", 1.0),
    ("training peak memory <= 1.0x PEFT prefix tuning", "memory", "ours_noproj", "peft_noproj", "memory", 1.0),
    ("folded evaluation tokens/s >= 0.95x base model", "eval", "ours_proj", "base", "rate", 0.95),
    ("folded evaluation tokens/s >= 0.95x base model", "eval", "ours_noproj", "base", "rate", 0.95),
)


def summarise(times: dict[str, dict[str, list[float]]], memory: dict[str, dict], flops: dict[str, StepFlops],
              s: Any, peak: float | dict[str, float], share: float = 1.0) -> dict[str, Any]:
    """``share``: the fraction of the output layer the loss head multiplies by (label rows)."""
    tokens = {"train": s.batch * s.seq, "eval": s.batch * s.seq, "generate": s.gen_batch * s.new_tokens}
    arms: dict[str, Any] = {}
    for arm in next(iter(times.values())):  # the arms, in the order they ran
        row: dict[str, Any] = {}
        for phase, per_arm in times.items():
            q1, med, q3 = quartiles(per_arm[arm])
            row[phase] = {"median_s": med, "iqr_s": q3 - q1, "tokens_per_s": tokens[phase] / med}
        if "train" in times and arm in flops:
            achieved = flops[arm].count(s.batch, s.seq, train=True, head_share=share) / row["train"]["median_s"]
            arm_peak = peak.get(arm) if isinstance(peak, dict) else peak  # per arm: the peak of its precision
            row["train"]["mfu"] = achieved / arm_peak if arm_peak else None
        if arm in memory:
            row["memory"] = memory[arm]
        arms[arm] = row
    ratios: dict[str, Any] = {}
    for a, b in PAIRS:
        if a not in arms or b not in arms:  # the fp32 reference runs only beside another precision
            continue
        for phase, per_arm in times.items():
            paired = [tb / ta for ta, tb in zip(per_arm[a], per_arm[b], strict=True)]  # rate ratio a/b
            q1, med, q3 = quartiles(paired)
            ratios[f"{phase}:{a}/{b}"] = {"median": med, "q1": q1, "q3": q3}
        ma, mb = memory.get(a, {}).get("bytes"), memory.get(b, {}).get("bytes")
        if ma and mb:
            # paired by repeat (children ran interleaved), like the rate ratios
            pa, pb = memory[a].get("samples", [ma]), memory[b].get("samples", [mb])
            q1, med, q3 = quartiles([x / y for x, y in zip(pa, pb, strict=False)])
            ratios[f"memory:{a}/{b}"] = {"median": med, "q1": q1, "q3": q3}
    targets = []
    for what, phase, a, b, kind, bound in TARGETS:
        r = ratios.get(f"{phase}:{a}/{b}")
        if r is None:
            targets.append({"target": what, "arms": f"{a}/{b}", "ratio": None, "met": None, "by": None})
            continue
        met = r["median"] >= bound if kind == "rate" else r["median"] <= bound
        by = (r["median"] - bound) if kind == "rate" else (bound - r["median"])
        targets.append({"target": what, "arms": f"{a}/{b}", "ratio": r["median"], "met": met, "by": by})
    return {"arms": arms, "ratios": ratios, "targets": targets}


def _mb(n: float | None) -> str:
    return "—" if not n else f"{n / 2**20:.0f} MB"


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    s = meta["settings"]
    phases = [p for p in ("train", "eval", "generate") if p in next(iter(summary["arms"].values()))]
    floor = meta.get("load_only_bytes")
    rows = []
    for arm, row in summary["arms"].items():
        r = {"arm": arm}
        for p in phases:
            r[f"{p} tok/s"] = f"{row[p]['tokens_per_s']:.0f}"
            r[f"{p} ms (IQR)"] = f"{row[p]['median_s'] * 1e3:.0f} ({row[p]['iqr_s'] * 1e3:.0f})"
        if "train" in phases:
            m = row["train"].get("mfu")
            r["train MFU"] = f"{m:.3f}" if m else "—"
        mem = row.get("memory", {})
        r["peak mem (train)"] = mem.get("error", _mb(mem.get("bytes")))
        r["above load"] = _mb(mem["bytes"] - floor) if mem.get("bytes") and floor else "—"
        rows.append(r)
    ratio_rows = [{"ratio (a/b)": k, "median": f"{v['median']:.3f}", "IQR": f"{v['q1']:.3f}–{v['q3']:.3f}"}
                  for k, v in summary["ratios"].items()]
    target_rows = [{"target": t["target"], "arms": t["arms"],
                    "measured": "—" if t["ratio"] is None else f"{t['ratio']:.3f}",
                    "met": {True: "yes", False: "NO", None: "—"}[t["met"]],
                    "margin": "—" if t["by"] is None else f"{t['by']:+.3f}"} for t in summary["targets"]]
    cell = meta.get("cell")
    if cell:
        ok = cell["harness_overhead"] is not None and cell["harness_overhead"] <= 0.05
        target_rows.append({"target": "harness overhead <= 5% of a cell", "arms": f"run_cell, {cell['train_steps']} steps",
                            "measured": f"{cell['harness_overhead']:.3f}", "met": "yes" if ok else "NO",
                            "margin": f"{0.05 - cell['harness_overhead']:+.3f}"})
    return "\n".join([
        f"# Prefix tuning performance: ours vs PEFT vs base ({meta['backbone']})", "",
        f"Device {meta['device']}, torch {meta['versions'].get('torch')}, peft {meta['versions'].get('peft')}, "
        f"git {meta['git_sha'][:10]}{' (dirty)' if meta['git_dirty'] else ''}, {meta['started_at']}. "
        f"Batch {s['batch']} x {s['seq']} tokens, prefix {s['prefix']}, generation {s['gen_batch']} x "
        f"{s['gen_prompt']} + {s['new_tokens']} new tokens; {s['repeats']} interleaved repeats x {s['steps']} "
        f"steps; training in {meta.get('precision', 'fp32')} for every arm but ours_proj_fp32 (fp32), evaluation and "
        f"generation in {meta.get('eval_precision', meta.get('precision', 'fp32'))} for every arm (as cells evaluate); measured "
        f"peak {meta['peak_flops'] / 1e9:.1f} GFLOP/s in it. Loss: verbalizer (the label rows of the output "
        "layer at the last position only). Memory: the median of "
        f"{s.get('memory_repeats', 1)} fresh child processes per arm (two training steps each, weights read in "
        f"first), {meta['memory_kind']}; 'above load' subtracts children that only loaded the backbone.", "",
        tabulate(rows, headers="keys", tablefmt="github"), "",
        "Ratios of rates (tokens/s) and of memory peaks, paired per repeat:", "",
        tabulate(ratio_rows, headers="keys", tablefmt="github"), "",
        tabulate(target_rows, headers="keys", tablefmt="github"), "", *scaling_markdown(meta.get("scaling"))])


def scaling_markdown(rows: list[dict[str, Any]] | None) -> list[str]:
    if not rows:
        return []
    table = [{"batch x seq": f"{r['batch']} x {r['seq']}", "prefix": r["prefix"],
              "ours_proj ms": f"{r['ours_proj_ms']:.0f}", "peft_proj ms": f"{r['peft_proj_ms']:.0f}",
              "ours/PEFT tokens/s": f"{r['ratio']:.3f}", "IQR": f"{r['q1']:.3f}–{r['q3']:.3f}"} for r in rows]
    return ["Training step at larger batch x prefix (ours_proj vs peft_proj only, 3 interleaved repeats x 2 "
            "steps): PEFT runs the MLP on batch x P rows, ours on P.", "",
            tabulate(table, headers="keys", tablefmt="github"), ""]
