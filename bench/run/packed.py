"""Many cells in one pass: cells that share a frozen backbone and a task train together.

Cells that differ only in seed, learning rate and prefix length (same backbone, task,
method, method options, formulation and every other training setting: ``pack_key``) and
whose method is ``packable`` (methods/base.py) form a pack. Each step, every cell draws
its own batch from its own seeded plan; the batches are encoded as one padded batch, in
pack order, and one forward and one backward run the frozen backbone once, each row with
its own cell's prefix (``Adapter.packed_forward``) and, with a classification head, its
own cell's head. Each cell's loss is the formulation's loss over its own rows
(``Formulation.train_losses``: the mean over its rows, as alone); the losses are summed
for one backward, and since the cells' parameters are disjoint each cell's gradient is
the one it gets alone. Each cell then clips its own gradients and steps its own AdamW and
schedule. Evaluation, artefacts and rows are each cell's own, as alone.

Early stopping (``patience``) is each cell's own too: every cell scores its own held-out
slice at the steps it would alone, keeps its own best parameters, and once its patience runs
out it goes back to them and leaves the pack; the others go on in a smaller pass. A cell
leaving changes the others' batch shape, not their numbers beyond float rounding.

Equal to alone up to float rounding: a row's keys are padded to the pack's longest prefix
and its text to the pack's longest example, which changes summation orders, never which
terms are summed (masked slots weigh exactly 0). So packing needs a training forward
that draws no random numbers: a backbone with dropout (MiniLM, BERT) runs its cells
alone, as does a pack whose cells' methods attach anything else than ``packable``
promises (``why_not``).

Costs in a packed row: a step's seconds are shared among the pack's cells in proportion
to their real tokens, so the pack's wall time is the sum of its rows' training seconds
and every packed row's ``train_tokens_per_s`` is the pack's (tokens of all its cells per
second of its steps). Its peak memory is the pack's (marked as an upper bound on CPU) and
``harness_overhead`` the pack's. ``packed_with`` says how many cells trained together.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from bench.core.record import PROCESS_PEAK
from bench.core.records import ResultRecord
from bench.measure import efficiency
from bench.run.cell import (
    CellRun,
    attach,
    checked_score,
    evaluate_stage,
    failed_record,
    periodic_eval,
    persist,
    prepare,
    record,
)
from bench.run.formulations import spans
from bench.run.matrix import Cell
from bench.run.trainer import (
    NonFiniteLossError,
    Plateau,
    TrainStats,
    _drain,
    linear_schedule,
    make_optimizer,
    plan_training,
)
from methods import METHODS, Adapter
from tasks import DataSettings

# What may differ between the cells of one pack; everything else in a cell's id is equal.
FREE = ("seed", "prefix_length")
FREE_TRAIN = ("lr",)


def pack_key(cell: Cell) -> str | None:
    """Cells with equal keys can train in one pass; None: this cell's method cannot pack."""
    if not METHODS.get(cell.method).packable:
        return None
    d = cell.resolved()
    for name in FREE:
        d.pop(name)
    d["train"] = {k: v for k, v in d["train"].items() if k not in FREE_TRAIN}
    return json.dumps(d, sort_keys=True, default=str)


def ordered(cells: Iterable[Cell]) -> list[Cell]:
    """Cells that share a loaded backbone and data next to each other (by backbone, then
    task), and within them cells that can pack together next to each other, at the place
    of the first of them; otherwise the given order."""
    cells = sorted(cells, key=lambda c: (c.backbone, c.task))
    keys = [pack_key(c) or ("alone", i) for i, c in enumerate(cells)]
    first: dict[Any, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    return [cells[i] for i in sorted(range(len(cells)), key=lambda i: first[keys[i]])]


def packs(cells: Iterable[Cell], size: int) -> Iterator[list[Cell]]:
    """Consecutive cells of one ``pack_key``, at most ``size`` at a time; a cell that cannot
    pack comes alone. Lazy: a pack is handed out as soon as it is full, or when the next
    cell does not fit it (``cells`` may claim each cell as it is drawn)."""
    group: list[Cell] = []
    key: str | None = None
    for cell in cells:
        k = pack_key(cell) if size > 1 else None
        if group and k != key:
            yield group
            group = []
        group.append(cell)
        key = k
        if k is None or len(group) >= size:
            yield group
            group = []
    if group:
        yield group


class RowHeads(nn.Module):
    """Stands in for one task head of the lead cell's model during a packed forward: each
    cell's own head on its own rows."""

    def __init__(self, heads: Sequence[nn.Module], rows: Sequence[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.rows = list(rows)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.cat([head(x[lo:hi], *args, **kwargs)
                          for head, (lo, hi) in zip(self.heads, spans(self.rows), strict=True)])


def head_names(model: nn.Module) -> list[str]:
    """Children of an adapted model outside its backbone body that train (a classification
    head); the frozen output layer of a causal LM is shared, not split."""
    body = getattr(model, "base_model_prefix", "")
    return [name for name, child in model.named_children()
            if name != body and any(p.requires_grad for p in child.parameters())]


class PackedModel(nn.Module):
    """The pack's adapters as one model for the formulation: a forward is one pass of the
    lead adapter's backbone over the packed batch, the first ``rows[0]`` rows being the
    first adapter's, and so on. The lead's backbone comes first in ``modules()``, so the
    verbalizer's label-row head (bench/run/label_head.py) swaps the layer this pass uses."""

    def __init__(self, adapters: Sequence[Adapter], rows: Sequence[int]) -> None:
        super().__init__()
        self.adapters = nn.ModuleList(adapters)
        self.rows = list(rows)
        self.heads = head_names(adapters[0].model)

    def forward(self, **kwargs: Any) -> Any:
        adapters = list(self.adapters)
        lead = adapters[0].model
        own = {name: getattr(lead, name) for name in self.heads}
        for name in self.heads:
            setattr(lead, name, RowHeads([getattr(a.model, name) for a in adapters], self.rows))
        try:
            return type(adapters[0]).packed_forward(adapters, self.rows, **kwargs)
        finally:
            for name, head in own.items():
                setattr(lead, name, head)


def draws_random(module: nn.Module) -> bool:
    """Whether a training forward of ``module`` may draw random numbers (dropout): a packed
    cell would then draw other numbers than alone, so it could not equal its alone run.
    Conservative: any dropout module or backbone dropout setting above 0 counts."""
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        config = getattr(m, "config", None)
        if hasattr(config, "to_dict") and any(
                ("dropout" in k or "pdrop" in k) and isinstance(v, float) and v > 0
                for k, v in config.to_dict().items()):
            return True
    return False


def why_not(runs: Sequence[CellRun]) -> str:
    """Why these attached cells cannot train in one pass ("" when they can)."""
    kinds = {type(r.adapter) for r in runs}
    if len(kinds) > 1:
        return f"their adapters are of different classes ({', '.join(sorted(k.__name__ for k in kinds))})"
    lead = runs[0]
    if lead.cfg.compile:
        return "compile = true: a packed step runs eager, so each cell runs alone, compiled as asked"
    if any(p.requires_grad for p in lead.loaded.model.parameters()):
        return "the method unfroze a weight of the shared backbone"
    if any(r.on_eval is not None for r in runs):
        return "a search scheduler watches each cell's evaluations (it stops trials one at a time, alone)"
    if draws_random(lead.adapter):
        return "the backbone draws dropout masks while training: a packed cell's masks would differ from its own"
    return ""


@dataclass
class Member:
    """One cell's training state inside a pack."""

    run: CellRun
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    plan: list[list[int]]
    plateau: Plateau | None = None  # early stopping (patience > 0): this cell's best so far
    pending: list[torch.Tensor] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False  # left the pack: its patience ran out, or it failed

    def finish(self, step: int) -> None:
        """Leave the pack at ``step``: the last losses drained and, when early-stopped, the
        best evaluation's parameters back (as ``trainer.train`` ends alone)."""
        self.done = True
        try:
            _drain(self.pending, self.run.stats)
        except NonFiniteLossError as err:
            self.error = err
            return
        if self.plateau is not None:
            self.plateau.finish(self.run.adapter, self.run.stats, step)

    @classmethod
    def of(cls, run: CellRun) -> Member:
        params = [p for p in run.adapter.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("the method left no trainable parameters")
        cfg = run.cfg
        optimizer, kind = make_optimizer(params, cfg)
        schedule = linear_schedule(optimizer, math.ceil(cfg.warmup_ratio * cfg.train_steps), cfg.train_steps)
        plan, padded, padded_plain = plan_training(run.formulation, run.train_examples, cfg, run.cell.seed)
        run.stats = TrainStats(precision=run.precision.name, optimizer=kind, padding_fraction=padded,
                               padding_fraction_unbucketed=padded_plain,
                               evals_on="holdout" if run.holdout_examples else "eval")
        plateau = Plateau(cfg.patience, run.higher_is_better) if cfg.patience else None
        return cls(run, params, optimizer, schedule, plan, plateau)


def train_pack(runs: Sequence[CellRun]) -> list[BaseException | None]:
    """Train the attached cells together, as ``bench.run.trainer.train`` trains each alone;
    fills each run's ``stats``. Returns each cell's error (a non-finite loss fails that
    cell alone, as alone; the others go on) or None."""
    members = [Member.of(run) for run in runs]
    lead = runs[0]
    cfg, formulation, device = lead.cfg, lead.formulation, lead.device
    torch.manual_seed(lead.cell.seed)  # nothing random is drawn (why_not); kept for parity with alone
    for m in members:
        m.run.adapter.unfold()
        m.run.adapter.train()
    step_total = 0.0  # seconds of the pack's steps
    bar = tqdm(range(1, cfg.train_steps + 1), desc=f"train pack of {len(runs)} ({lead.label}, ...)", unit="step",
               leave=False, dynamic_ncols=True, mininterval=1.0, disable=None)
    start = time.perf_counter()
    for step in bar:
        active = [m for m in members if m.error is None and not m.done]
        if not active:
            break
        t0 = time.perf_counter()
        rows = [len(m.plan[step - 1]) for m in active]
        cpu_batch = formulation.encode([m.run.train_examples[i] for m in active for i in m.plan[step - 1]])
        tokens = [formulation.count_tokens({k: v[lo:hi] for k, v in cpu_batch.items()}) for lo, hi in spans(rows)]
        batch = {k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()}
        for m in active:
            m.optimizer.zero_grad(set_to_none=False)  # as alone: the buffers are kept
        with lead.precision.autocast():
            losses = formulation.train_losses(PackedModel([m.run.adapter for m in active], rows), batch, rows)
        torch.stack(losses).sum().backward()
        for m, loss in zip(active, losses, strict=True):
            torch.nn.utils.clip_grad_norm_(m.params, m.run.cfg.max_grad_norm)
            m.optimizer.step()
            m.schedule.step()
            m.pending.append(loss.detach())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        step_total += seconds
        for m, n in zip(active, tokens, strict=True):
            m.run.stats.step_seconds.append(seconds * n / max(1, sum(tokens)))
            m.run.stats.step_tokens.append(n)
            log = m.run.adapter.step_log()
            if log:
                m.run.stats.step_logs.append({"step": step, **log})
        if step % cfg.log_every == 0 or step == cfg.train_steps:
            for m in active:
                try:
                    _drain(m.pending, m.run.stats)
                except NonFiniteLossError as err:
                    m.error = err
        # the evaluations alone would run (bench/run/trainer.py): every eval_every steps, and
        # with patience at the last step too
        due = bool(cfg.eval_every) and step % cfg.eval_every == 0
        last = step == cfg.train_steps
        if (due and not last) or (cfg.patience and (due or last)):
            for m in active:
                if m.error is not None:
                    continue
                score = periodic_eval(m.run)
                m.run.stats.evals.append((step, score))
                if m.plateau is not None and m.plateau.update(step, score, m.run.adapter):
                    m.finish(step)
                    continue
                m.run.adapter.unfold()
                m.run.adapter.train()
        if last:
            for m in active:
                if m.error is None and not m.done:
                    m.finish(step)
    bar.close()
    # the loop's time outside steps and periodic evaluations (draining, the bar) is shared
    # like the steps' time
    rest = time.perf_counter() - start - step_total - sum(r.periodic_eval_seconds for r in runs)
    total_tokens = sum(r.stats.tokens for r in runs) or 1
    for r in runs:
        r.stats.seconds = sum(r.stats.step_seconds) + r.periodic_eval_seconds + rest * r.stats.tokens / total_tokens
    return [m.error for m in members]


def train_together(cells: Sequence[Cell], data: DataSettings, device: torch.device,
                   results_dir: Path | None, log: Callable[[str], None] = print) -> dict[str, ResultRecord]:
    """Train ``cells`` (one ``pack_key``) in one pass, then evaluate, save and record each as
    alone; returns each cell's row by id (ok, or failed by its own non-finite loss or its
    own evaluation). Returns {} when they cannot pack (``why_not``, said in ``log``) or the
    pass itself failed: the caller then runs each cell alone."""
    if len(cells) < 2:
        return {}
    if len({pack_key(c) for c in cells}) != 1 or pack_key(cells[0]) is None:
        raise ValueError("train_together needs cells of one pack key (bench.run.packed.pack_key)")
    runs: list[CellRun] = []
    shared: list[nn.Parameter] = []
    try:
        runs = [prepare(cell, data, device) for cell in cells]
        wall_start = runs[0].wall_start
        shared = list(runs[0].loaded.model.parameters())
        for run in runs:
            attach(run, share_frozen=True)
        why = why_not(runs)
        if why:
            log(f"{len(cells)} {cells[0].method} cells cannot train in one pass ({why}); each runs alone")
            return {}
        errors = train_pack(runs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:
        log(f"a pack of {len(cells)} {cells[0].method} cells failed ({type(err).__name__}: {err}); "
            "each runs alone")
        runs.clear()  # drop the pack's adapters and activations before the cells run alone
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {}
    finally:
        for p in shared:
            p.requires_grad_(False)  # the shared backbone stays frozen for every later cell
    rows: dict[str, ResultRecord] = {}
    compute = 0.0
    for run, error in zip(runs, errors, strict=True):
        if error is not None:
            rows[run.cell.id] = failed_record(run.cell, error, run.started)
            continue
        try:
            evaluate_stage(run)
            persist(run, results_dir)
            rows[run.cell.id] = checked_score(record(run))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # this cell's evaluation or saving: its row alone fails
            rows[run.cell.id] = failed_record(run.cell, err, run.started)
        compute += sum(run.stats.step_seconds) + run.periodic_eval_seconds + run.result.seconds
    overhead = efficiency.harness_overhead(time.perf_counter() - wall_start, compute)
    for cell_id, row in rows.items():
        changes: dict[str, Any] = {"packed_with": len(cells)}
        if row.harness_overhead is not None:
            changes["harness_overhead"] = overhead
        if row.peak_memory_kind.startswith("cpu"):
            changes["peak_memory_kind"] = PROCESS_PEAK  # the pack's peak: an upper bound of the cell's
        rows[cell_id] = dataclasses.replace(row, **changes)
    return rows
