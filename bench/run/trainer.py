"""The one training loop and the one evaluator, shared by every method and task.

AdamW (fused where torch has it for the parameters' device, else multi-tensor ``foreach``;
gradients stay allocated between steps), linear warm-up then linear decay, gradient
clipping, a seeded sampler with length-bucketed batches, dynamic padding per batch, the
cell's precision (bench/run/precision.py) and optionally a ``torch.compile``d forward.
Throughput counts non-padding tokens through forward+backward, with the first steps
(warm-up of allocators and kernels, compilation) excluded.

Length buckets (``bucket_window`` = W): the seeded order of examples (epochs of
permutations, as without buckets) is cut into windows of W batches, never across an epoch's
end; each window is sorted by token length (stable), cut into batches, and its whole
batches are shuffled (seeded). Every epoch keeps exactly its examples; a batch holds
examples of similar length, so less of it is padding.

Early stopping (``patience`` = K > 0): every ``eval_every`` steps, and at the last step, the
caller's periodic evaluation scores the held-out slice; training stops once K evaluations in a
row have not improved on the best (in the main metric's direction), and the trainable
parameters go back to the best evaluation's, which the cell then evaluates and saves.

A scheduler outside the loop (``on_eval``; Ray Tune's, bench/run/executors/tune_trials.py) sees
each periodic evaluation that training would continue past and may stop training there; the
parameters then go back to the best evaluation's too, as an early stop by patience does.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from bench.core.config import TrainConfig
from bench.run.formulations import Formulation
from bench.run.precision import Precision, fp32_evaluation
from methods.base import Adapter
from tasks.base import Example

WARMUP_STEPS_EXCLUDED = 2


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


@dataclass
class TrainStats:
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    seconds: float = 0.0
    step_logs: list[dict[str, Any]] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    precision: str = "fp32"  # resolved: fp32 | bf16-mixed
    compiled: bool = False  # every step ran through torch.compile
    compile_note: str = ""  # why a requested compile did not run (or stopped running)
    optimizer: str = ""  # AdamW implementation: fused | foreach | single-tensor
    # share of the planned batches' token positions that are padding, as trained and as
    # plain seeded batches of the same examples would have been (None: not measured)
    padding_fraction: float | None = None
    padding_fraction_unbucketed: float | None = None
    evals_on: str = "eval"  # what periodic evaluations scored: "eval" (the evaluation split) | "holdout"
    # early stopping (None: off): the step whose parameters were kept, the step training
    # ended, and whether patience ended it (False: the step budget ran out first)
    best_step: int | None = None
    stopped_step: int | None = None
    plateaued: bool | None = None
    scheduler_stop: bool = False  # ``on_eval`` (a search scheduler) ended training before its budget

    @property
    def tokens(self) -> int:
        return sum(self.step_tokens)

    def tokens_per_s(self) -> float:
        """Median over steps of tokens/s, first steps excluded."""
        pairs = list(zip(self.step_tokens, self.step_seconds, strict=True))
        steady = pairs[WARMUP_STEPS_EXCLUDED:] or pairs
        rates = [t / s for t, s in steady if s > 0]
        return statistics.median(rates) if rates else 0.0

    def median_step_seconds(self) -> float:
        steady = self.step_seconds[WARMUP_STEPS_EXCLUDED:] or self.step_seconds
        return statistics.median(steady) if steady else 0.0


def _seeded_order(n_examples: int, batch_size: int, steps: int, g: torch.Generator) -> list[int]:
    if n_examples < 1 or batch_size < 1 or steps < 0:
        raise ValueError(f"cannot plan {steps} batches of {batch_size} from {n_examples} examples: "
                         "need at least one example and a batch size >= 1")
    order: list[int] = []
    need = steps * batch_size
    while len(order) < need:
        order.extend(torch.randperm(n_examples, generator=g).tolist())
    return order[:need]


def batches_for_training(n_examples: int, batch_size: int, steps: int, seed: int,
                         lengths: Callable[[list[int]], Sequence[int]] | None = None,
                         window: int = 0) -> list[list[int]]:
    """Index lists for ``steps`` batches: epochs of seeded permutations, no example repeated
    within an epoch. A split smaller than a batch is cycled (a batch then holds an example
    more than once); an empty one is a ValueError, since no number of epochs fills a batch.
    With ``window`` > 0 and ``lengths`` (indices -> their token lengths, called once), the
    batches are length-bucketed within windows of ``window`` batches (module doc)."""
    g = torch.Generator().manual_seed(seed)
    order = _seeded_order(n_examples, batch_size, steps, g)
    if window > 0 and lengths is not None and order:
        order = _bucketed(order, n_examples, batch_size, window, _length_table(order, lengths), g)
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def _length_table(order: list[int], lengths: Callable[[list[int]], Sequence[int]]) -> dict[int, int]:
    unique = sorted(set(order))
    found = list(lengths(unique))
    if len(found) != len(unique):
        raise ValueError(f"lengths gave {len(found)} values for {len(unique)} examples")
    return dict(zip(unique, found, strict=True))


def _bucketed(order: list[int], n_examples: int, batch_size: int, window: int, length: dict[int, int],
              g: torch.Generator) -> list[int]:
    """``order`` with each window (cut at every ``window`` batches and at every epoch's end)
    sorted by length and the whole batches inside it shuffled."""
    out = list(order)
    span = window * batch_size
    cuts = sorted({0, len(out), *range(span, len(out), span), *range(n_examples, len(out), n_examples)})
    for a, b in zip(cuts, cuts[1:], strict=False):
        out[a:b] = sorted(out[a:b], key=length.__getitem__)  # stable: ties keep the seeded order
        first, last = -(-a // batch_size), b // batch_size  # the batch slots wholly inside [a, b)
        if last - first < 2:
            continue
        chunks = [out[k * batch_size:(k + 1) * batch_size] for k in range(first, last)]
        for k, src in enumerate(torch.randperm(len(chunks), generator=g).tolist(), first):
            out[k * batch_size:(k + 1) * batch_size] = chunks[src]
    return out


def padding_fraction(plan: Sequence[Sequence[int]], length: Callable[[int], int]) -> float:
    """Share of the padded batches' positions that are padding (each batch padded to its
    longest row, as the formulations pad)."""
    real = padded = 0
    for idx in plan:
        sizes = [length(i) for i in idx]
        real += sum(sizes)
        padded += len(sizes) * max(sizes, default=0)
    return 1.0 - real / padded if padded else 0.0


def plan_training(formulation: Formulation, examples: Sequence[Example], cfg: TrainConfig,
                  seed: int) -> tuple[list[list[int]], float, float]:
    """The batches ``train`` runs, and their padding fraction bucketed and as plain seeded
    batches of the same examples would pad (``bucket_window`` = 0: the same plan twice)."""
    table: dict[int, int] = {}

    def lengths(idx: list[int]) -> list[int]:
        table.update(zip(idx, formulation.token_lengths([examples[i] for i in idx]), strict=True))
        return [table[i] for i in idx]

    plain = batches_for_training(len(examples), cfg.batch_size, cfg.train_steps, seed)
    lengths(sorted({i for idx in plain for i in idx}))
    before = padding_fraction(plain, table.__getitem__)
    if not cfg.bucket_window:
        return plain, before, before
    plan = batches_for_training(len(examples), cfg.batch_size, cfg.train_steps, seed,
                                lengths=lambda idx: [table[i] for i in idx], window=cfg.bucket_window)
    return plan, padding_fraction(plan, table.__getitem__), before


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> tuple[torch.optim.Optimizer, str]:
    """AdamW, fused where torch has a fused kernel for the parameters' device and dtype (CPU
    and CUDA in torch >= 2.4), else the multi-tensor ``foreach`` one. They compute the same
    update as the single-tensor loop (to fp rounding: tests/test_trainer_step.py) in fewer
    kernels and without its per-parameter temporaries."""
    for kind in ("fused", "foreach"):
        try:
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **{kind: True}), kind
        except (RuntimeError, ValueError):  # no such kernel for these parameters
            continue
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False), "single-tensor"


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class _Forward:
    """The module the loss is computed through: the adapter, or (``compile``) its
    ``torch.compile``d forward until compiling or running it fails; then the adapter again,
    with a one-line warning and the reason kept for the row."""

    def __init__(self, adapter: Adapter, compile: bool) -> None:
        self.adapter = adapter
        self.compiled: torch.nn.Module | None = None
        self.note = ""
        if compile:
            try:
                self.compiled = torch.compile(adapter, dynamic=True)
            except Exception as err:  # unsupported here (platform, Python version)
                self.fall_back(err, 0)

    @property
    def module(self) -> torch.nn.Module:
        return self.compiled if self.compiled is not None else self.adapter

    def fall_back(self, err: BaseException, step: int) -> None:
        first = (str(err).strip().splitlines() or [""])[0][:300]
        where = f" at step {step}" if step else ""
        self.note = f"torch.compile failed{where} ({type(err).__name__}: {first}); ran eager"
        self.compiled = None
        tqdm.write(f"warning: {self.note}", file=sys.stderr)


@dataclass
class Plateau:
    """Early stopping: the best evaluation so far (its step, score and a copy of the
    trainable parameters) and how many evaluations since have not improved on it. A NaN
    score never improves. ``patience`` 0 only keeps the best (a scheduler may stop training)."""

    patience: int
    higher_is_better: bool = True
    best_step: int | None = None
    best_score: float = math.nan
    best_state: dict[str, torch.Tensor] | None = None
    since_best: int = 0

    def update(self, step: int, score: float, adapter: Adapter) -> bool:
        """Take evaluation ``score`` at ``step``; True when training should stop now."""
        better = score > self.best_score if self.higher_is_better else score < self.best_score
        if math.isfinite(score) and (self.best_step is None or better):
            self.best_step, self.best_score, self.since_best = step, score, 0
            self.best_state = {k: v.detach().clone() for k, v in adapter.trainable_state_dict().items()}
            return False
        self.since_best += 1
        return 0 < self.patience <= self.since_best

    def finish(self, adapter: Adapter, stats: TrainStats, stopped: int) -> None:
        """Put the best evaluation's parameters back and record how training ended."""
        if self.best_state is not None:
            adapter.load_trainable_state_dict(self.best_state)
        stats.best_step, stats.stopped_step = self.best_step, stopped
        stats.plateaued = self.since_best >= self.patience if self.patience else None


def train(adapter: Adapter, formulation: Formulation, examples: Sequence[Example], cfg: TrainConfig,
          seed: int, device: torch.device, desc: str = "train",
          periodic_eval: Callable[[int], float] | None = None, higher_is_better: bool = True,
          on_eval: Callable[[int, float], bool] | None = None) -> TrainStats:
    """Train ``adapter`` for ``cfg.train_steps`` steps, or (``cfg.patience``) until the
    score ``periodic_eval`` returns (in the direction ``higher_is_better``) stops improving.
    ``on_eval(step, score)`` is called after each periodic evaluation training would continue
    past; True stops training there, with the best evaluation's parameters kept
    (``stats.scheduler_stop``). It only observes: a run it never stops is the run without it.
    Under bf16-mixed the caller should have called ``Precision.prepare`` on the adapter
    (bench/run/cell.py does): without it autocast re-casts the frozen weights every step,
    to the same numbers, more slowly."""
    params = [p for p in adapter.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("the method left no trainable parameters")
    precision = Precision.of(cfg.precision, device)
    optimizer, kind = make_optimizer(params, cfg)
    warmup = math.ceil(cfg.warmup_ratio * cfg.train_steps)
    schedule = linear_schedule(optimizer, warmup, cfg.train_steps)
    torch.manual_seed(seed)
    plan, padded, padded_plain = plan_training(formulation, examples, cfg, seed)
    stats = TrainStats(precision=precision.name, optimizer=kind, padding_fraction=padded,
                       padding_fraction_unbucketed=padded_plain)
    forward = _Forward(adapter, cfg.compile)
    # with only a scheduler watching, the best parameters are kept for the case it stops training
    plateau = (Plateau(cfg.patience, higher_is_better)
               if periodic_eval is not None and (cfg.patience or on_eval is not None) else None)
    adapter.unfold()
    adapter.train()
    step = 0
    pending: list[torch.Tensor] = []  # losses kept on device: no sync per step
    bar = tqdm(plan, desc=desc, unit="step", leave=False, dynamic_ncols=True, mininterval=1.0, disable=None)
    start = time.perf_counter()
    for step, idx in enumerate(bar, 1):
        t0 = time.perf_counter()
        batch = _to(formulation.encode([examples[i] for i in idx]), device)
        optimizer.zero_grad(set_to_none=False)  # keep the buffers: no fresh pages every step
        loss = _forward_backward(forward, formulation, batch, precision, optimizer, step)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        schedule.step()
        pending.append(loss.detach())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats.step_seconds.append(time.perf_counter() - t0)
        stats.step_tokens.append(formulation.count_tokens(batch))
        log = adapter.step_log()
        if log:
            stats.step_logs.append({"step": step, **log})
        if step % cfg.log_every == 0 or step == cfg.train_steps:
            _drain(pending, stats)
            bar.set_postfix(loss=f"{stats.losses[-1]:.4f}", refresh=False)
        due = bool(cfg.eval_every) and step % cfg.eval_every == 0
        last = step == cfg.train_steps  # the final evaluation follows, except for early stopping's choice
        if periodic_eval is not None and ((due and not last) or (cfg.patience and (due or last))):
            score = periodic_eval(step)
            stats.evals.append((step, score))
            if plateau is not None and plateau.update(step, score, adapter):
                break
            if on_eval is not None and not last and on_eval(step, score):
                stats.scheduler_stop = True
                break
            adapter.unfold()
            adapter.train()
    _drain(pending, stats)
    if plateau is not None and (cfg.patience or stats.scheduler_stop):  # else: as without a scheduler
        plateau.finish(adapter, stats, step)
    stats.seconds = time.perf_counter() - start
    stats.compiled, stats.compile_note = forward.compiled is not None, forward.note
    bar.close()
    return stats


def _forward_backward(forward: _Forward, formulation: Formulation, batch: dict[str, torch.Tensor],
                      precision: Precision, optimizer: torch.optim.Optimizer, step: int) -> torch.Tensor:
    """The loss of one batch, its gradients accumulated into the (zeroed) parameters'."""
    if forward.compiled is not None:
        try:
            with precision.autocast():
                loss = formulation.train_loss(forward.compiled, batch)
            loss.backward()
            return loss
        except Exception as err:  # compilation (lazy: first call, new shapes, backward) failed
            forward.fall_back(err, step)
            optimizer.zero_grad(set_to_none=False)  # a backward may have added part of its gradients
    with precision.autocast():
        loss = formulation.train_loss(forward.adapter, batch)
    loss.backward()
    return loss


def _drain(pending: list[torch.Tensor], stats: TrainStats) -> None:
    if not pending:
        return
    values = torch.stack(pending).float().cpu().tolist()
    pending.clear()
    stats.losses.extend(values)
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise NonFiniteLossError(f"non-finite training loss {bad[0]} at step {len(stats.losses) - len(values) + values.index(bad[0]) + 1}")


@dataclass
class EvalResult:
    predictions: list
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@torch.no_grad()
def evaluate(adapter: Adapter, formulation: Formulation, examples: Sequence[Example], batch_size: int,
             device: torch.device, desc: str = "eval") -> EvalResult:
    """Predictions for every example, with the method folded for inference, in fp32 whatever
    the cell trained in (``fp32_evaluation``: a bf16 evaluation's predictions depend on the batch)."""
    with fp32_evaluation(adapter):
        return _evaluate(adapter, formulation, examples, batch_size, device, desc)


def _evaluate(adapter: Adapter, formulation: Formulation, examples: Sequence[Example], batch_size: int,
              device: torch.device, desc: str) -> EvalResult:
    adapter.eval()
    adapter.fold()
    preds: list = []
    tokens = 0
    start = time.perf_counter()
    for i in tqdm(range(0, len(examples), batch_size), desc=desc, unit="batch", leave=False, disable=None,
                  dynamic_ncols=True, mininterval=1.0):
        batch = _to(formulation.encode_eval(examples[i:i + batch_size]), device)
        preds.extend(formulation.predict(adapter, batch))
        tokens += formulation.count_tokens(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return EvalResult(preds, tokens, time.perf_counter() - start)
