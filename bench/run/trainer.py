"""The one training loop and the one evaluator, shared by every method and task.

AdamW, linear warm-up then linear decay, gradient clipping, a seeded sampler, dynamic
padding per batch. Throughput counts non-padding tokens through forward+backward, with the
first steps (warm-up of allocators and kernels) excluded.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from bench.core.config import TrainConfig
from bench.run.formulations import Formulation
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


def batches_for_training(n_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Index lists for ``steps`` batches: epochs of seeded permutations, no example repeated
    within an epoch. A split smaller than a batch is cycled (a batch then holds an example
    more than once); an empty one is a ValueError, since no number of epochs fills a batch."""
    if n_examples < 1 or batch_size < 1 or steps < 0:
        raise ValueError(f"cannot plan {steps} batches of {batch_size} from {n_examples} examples: "
                         "need at least one example and a batch size >= 1")
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    need = steps * batch_size
    while len(order) < need:
        order.extend(torch.randperm(n_examples, generator=g).tolist())
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train(adapter: Adapter, formulation: Formulation, examples: Sequence[Example], cfg: TrainConfig,
          seed: int, device: torch.device, desc: str = "train",
          periodic_eval: Callable[[int], float] | None = None) -> TrainStats:
    params = [p for p in adapter.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("the method left no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = math.ceil(cfg.warmup_ratio * cfg.train_steps)
    schedule = linear_schedule(optimizer, warmup, cfg.train_steps)
    torch.manual_seed(seed)
    plan = batches_for_training(len(examples), cfg.batch_size, cfg.train_steps, seed)
    stats = TrainStats()
    adapter.unfold()
    adapter.train()
    pending: list[torch.Tensor] = []  # losses kept on device: no sync per step
    bar = tqdm(plan, desc=desc, unit="step", leave=False, dynamic_ncols=True, mininterval=1.0, disable=None)
    start = time.perf_counter()
    for step, idx in enumerate(bar, 1):
        t0 = time.perf_counter()
        batch = _to(formulation.encode([examples[i] for i in idx]), device)
        loss = formulation.train_loss(adapter, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
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
        if periodic_eval is not None and cfg.eval_every and step % cfg.eval_every == 0 \
                and step != cfg.train_steps:
            stats.evals.append((step, periodic_eval(step)))
            adapter.unfold()
            adapter.train()
    _drain(pending, stats)
    stats.seconds = time.perf_counter() - start
    bar.close()
    return stats


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
    """Predictions for every example, with the method folded for inference."""
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
