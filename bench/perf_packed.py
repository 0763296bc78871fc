"""`python -m bench.perf_packed`: cells/hour of K cells trained in one pass (bench/run/packed.py)
against the same K cells one after another, in one run.

The cells: prefix tuning on SmolLM2-135M (verbalizer, SST-2), one prefix length, K seeds
and K learning rates (a learning-rate search). Arms, interleaved A B A B (``--repeats``
each), each on fresh temporary results folders after one untimed warm-up of loads:
  sequential  ``run_cell`` for each cell (attach, train, evaluate, save, row)
  packed      ``train_together`` for the K cells (one training pass; evaluation, saving
              and rows per cell, as alone)
Reported per arm: wall seconds for the K cells (cells/hour = K / wall), training seconds
(the steps alone), and the paired ratio packed/sequential per repeat with its median.
Also the padding each arm trains on (padded token slots / real tokens, over the cells'
own plans), and for the packed arm a breakdown of one step (``--profile``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.measure import provenance


def cells_for(k: int, steps: int, batch: int, length: int, eval_limit: int, backbone: str,
              precision: str = "auto") -> list:
    from bench.run.matrix import expand

    train = {"train_steps": steps, "batch_size": batch, "eval_limit": eval_limit, "max_length": 64,
             "eval_batch_size": 64, "precision": precision}
    suite = {"methods": ["prefix_tuning"], "tasks": ["glue/sst2"], "backbones": [backbone],
             "prefix_lengths": [length], "seeds": list(range(k)), "train": train}
    cells = expand({"suites": {"perf": suite}}, "perf")
    lrs = [1e-3 * 2 ** i for i in range(k)]  # a learning-rate search, one seed per rate
    threads = torch.get_num_threads()
    device = "cuda" if precision == "auto" and torch.cuda.is_available() else "cpu"  # what auto resolves for
    return [dataclasses.replace(c, train={**c.train, "lr": lr}).pinned(threads, False, None, device)
            for c, lr in zip(cells, lrs, strict=True)]


def padding(cells: list, data: Any, device: torch.device) -> dict[str, float]:
    """Padded token slots per real token, alone (each cell's batch padded to its own
    longest row) and packed (the K batches of a step padded to the longest of all)."""
    from bench.run.cell import attach, prepare
    from bench.run.trainer import batches_for_training

    alone_slots = packed_slots = real = 0
    runs = [prepare(c, data, device) for c in cells]
    plans = []
    for run in runs:
        attach(run, share_frozen=True)
        plans.append(batches_for_training(len(run.train_examples), run.cfg.batch_size, run.cfg.train_steps,
                                          run.cell.seed))
    form = runs[0].formulation
    for step in range(runs[0].cfg.train_steps):
        widths = []
        for run, plan in zip(runs, plans, strict=True):
            b = form.encode([run.train_examples[i] for i in plan[step]])
            widths.append(b["input_ids"].shape[1])
            alone_slots += b["input_ids"].numel()
            real += int(b["attention_mask"].sum())
        packed_slots += max(widths) * sum(len(p[step]) for p in plans)
    return {"alone_slots_per_real_token": alone_slots / real, "packed_slots_per_real_token": packed_slots / real}


def sequential(cells: list, data: Any, device: torch.device) -> dict[str, float]:
    from bench.run.cell import run_cell

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        rows = [run_cell(c, data, device, Path(out)) for c in cells]
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "train_s": sum(r.train_seconds for r in rows),
            "scores": [r.main_score for r in rows], "final_loss": [r.final_loss for r in rows]}


def packed(cells: list, data: Any, device: torch.device) -> dict[str, float]:
    from bench.run.packed import train_together

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        rows = train_together(cells, data, device, Path(out), log=print)
        wall = time.perf_counter() - t0
    if len(rows) != len(cells) or any(r.status != "ok" for r in rows.values()):
        raise RuntimeError(f"the pack did not train: {[r.error for r in rows.values()]}")
    ordered = [rows[c.id] for c in cells]
    return {"wall_s": wall, "train_s": sum(r.train_seconds for r in ordered),
            "scores": [r.main_score for r in ordered], "final_loss": [r.final_loss for r in ordered]}


def profile_step(cells: list, data: Any, device: torch.device, steps: int = 3) -> dict[str, Any]:
    """Where one training step's time goes, alone (one cell's batch) and packed (K batches):
    torch profiler totals by operator, top entries."""
    from torch.profiler import ProfilerActivity, profile

    from bench.run.cell import attach, prepare
    from bench.run.packed import PackedModel
    from bench.run.trainer import batches_for_training

    runs = [prepare(c, data, device) for c in cells]
    for run in runs:
        attach(run, share_frozen=True)
        run.adapter.train()
    form = runs[0].formulation
    plans = [batches_for_training(len(r.train_examples), r.cfg.batch_size, steps, r.cell.seed) for r in runs]
    out: dict[str, Any] = {}

    def one(which: str, step: int) -> None:
        members = runs if which == "packed" else runs[:1]
        rows = [len(plans[i][step]) for i in range(len(members))]
        batch = form.encode([r.train_examples[j] for i, r in enumerate(members) for j in plans[i][step]])
        if which == "packed":
            losses = form.train_losses(PackedModel([r.adapter for r in members], rows), batch, rows)
        else:
            losses = [form.train_loss(members[0].adapter, batch)]
        torch.stack(losses).sum().backward()
        for r in members:
            r.adapter.zero_grad(set_to_none=True)

    for which in ("alone", "packed"):
        one(which, 0)  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for step in range(1, steps):
                one(which, step)
            wall = (time.perf_counter() - t0) / (steps - 1)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
        out[which] = {"step_s": wall, "top_ops": table}
    return out


def markdown(result: dict[str, Any]) -> str:
    """The result as a short table (the JSON beside it holds every number)."""
    s, k = result["settings"], result["settings"]["k"]
    lines = [f"# {k} packed cells vs {k} sequential cells",
             "",
             f"`python -m bench.perf_packed --steps {s['steps']} --repeats {s['repeats']} --eval-limit {s['eval_limit']}`"
             f" on {s['device_name']}, {s['threads']} threads, git {str(s['git'])[:10]}: prefix tuning (MLP) on "
             f"{s['backbone']}, SST-2 verbalizer, batch {s['batch']}, P = {s['prefix_length']}, precision {s.get('precision_resolved', 'fp32')}; the cells "
             f"differ in seed {s['seeds']} and lr {s['lrs']}. Arms interleaved (sequential, packed) x "
             f"{s['repeats']}; a cell = attach, {s['steps']} training steps, evaluation on "
             f"{s['eval_limit']} examples, saving, row.",
             "",
             "| repeat | sequential wall s | packed wall s | cells/h ratio | sequential train s | packed train s "
             "| training ratio |",
             "|---|---|---|---|---|---|---|"]
    for i, (a, b) in enumerate(zip(result["arms"]["sequential"], result["arms"]["packed"], strict=True), 1):
        lines.append(f"| {i} | {a['wall_s']:.0f} | {b['wall_s']:.0f} | {a['wall_s'] / b['wall_s']:.2f}x "
                     f"| {a['train_s']:.0f} | {b['train_s']:.0f} | {a['train_s'] / b['train_s']:.2f}x |")
    cph = result["cells_per_hour"]
    pad = result["padding"]
    lines += ["",
              f"Cells/hour (median): sequential {cph['sequential']:.1f}, packed {cph['packed']:.1f}: "
              f"**{result['ratio_cells_per_hour']['median']:.2f}x** (target >= 1.3x); training alone "
              f"{result['ratio_training']['median']:.2f}x.",
              "",
              f"Padding trained on (token slots per real token): {pad['alone_slots_per_real_token']:.2f} alone, "
              f"{pad['packed_slots_per_real_token']:.2f} packed (a pack pads to the longest of its "
              f"{k * s['batch']} rows, each cell alone to the longest of its {s['batch']})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--k", type=int, default=4, help="cells")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prefix-length", type=int, default=20)
    ap.add_argument("--eval-limit", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16-mixed"),
                    help="the cells' training precision (auto: bf16-mixed where the device runs it fast)")
    ap.add_argument("--profile", action="store_true", help="also profile one step alone and packed")
    ap.add_argument("--out", default="results/perf/packed-cells")
    args = ap.parse_args(argv)

    from tasks import DataSettings

    device = provenance.pick_device(args.device)
    data = DataSettings.from_env()
    cells = cells_for(args.k, args.steps, args.batch, args.prefix_length, args.eval_limit, args.backbone,
                      args.precision)
    print(f"{args.k} cells x {args.steps} steps, batch {args.batch}, P={args.prefix_length}, {device}, "
          f"{torch.get_num_threads()} threads")
    warm = cells_for(2, 2, args.batch, args.prefix_length, 8, args.backbone, args.precision)
    packed(warm, data, device)  # loads backbone and data, measures the peak once, warms kernels
    pad = padding(cells, data, device)
    print(f"padding: {pad}")
    arms: dict[str, list[dict]] = {"sequential": [], "packed": []}
    for rep in range(args.repeats):
        for name, fn in (("sequential", sequential), ("packed", packed)):
            res = fn(cells, data, device)
            arms[name].append(res)
            print(f"repeat {rep + 1} {name}: wall {res['wall_s']:.1f} s, training {res['train_s']:.1f} s, "
                  f"{3600 * args.k / res['wall_s']:.1f} cells/h")
    ratios = [s["wall_s"] / p["wall_s"] for s, p in zip(arms["sequential"], arms["packed"], strict=True)]
    train_ratios = [s["train_s"] / p["train_s"] for s, p in zip(arms["sequential"], arms["packed"], strict=True)]
    result = {
        "settings": {**vars(args), "threads": torch.get_num_threads(), "device_name": provenance.device_name(device),
                     "lrs": [c.train["lr"] for c in cells], "seeds": [c.seed for c in cells],
                     "precision_resolved": cells[0].train["precision"],
                     "git": provenance.git_state()[0]},
        "arms": arms, "padding": pad,
        "cells_per_hour": {n: statistics.median(3600 * args.k / r["wall_s"] for r in runs) for n, runs in arms.items()},
        "ratio_cells_per_hour": {"per_repeat": ratios, "median": statistics.median(ratios)},
        "ratio_training": {"per_repeat": train_ratios, "median": statistics.median(train_ratios)},
    }
    if args.profile:
        result["profile"] = profile_step(cells, data, device)
        for which, p in result["profile"].items():
            print(f"== {which}: {p['step_s']:.2f} s/step\n{p['top_ops']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "packed.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "packed.md").write_text(markdown(result))
    print(f"cells/hour packed/sequential: median {result['ratio_cells_per_hour']['median']:.2f}x "
          f"(repeats {', '.join(f'{r:.2f}' for r in ratios)}); training only {result['ratio_training']['median']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
