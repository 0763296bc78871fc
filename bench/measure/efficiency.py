"""Per-cell efficiency fields: MFU, convergence speed, harness overhead.

Definitions (the same for every method):

* ``mfu`` = ``achieved_flops`` / ``peak_flops``. ``achieved_flops`` is the analytic model
  FLOPs per real token of a training step (``bench.measure.flops.StepFlops``, at the cell's batch
  size and mean real row length) times the median training tokens/s (warm-up steps
  excluded). ``peak_flops`` is measured once per process on the cell's device, in the dtype its
  matrix products run in (bf16 for a bf16-mixed cell, else fp32).
* ``steps_to_target``: the first step whose smoothed training loss (trailing mean over
  ``window`` steps, default 5% of the run, at least 1) has covered 95% of the run's
  improvement, i.e. is <= final + 0.05 * (first - final), with first/final the smoothed
  values at the start and end. None when the loss did not improve. Training loss, not
  periodic evaluations: every cell has it at every step, so methods compare step for step.
* ``harness_overhead`` = 1 - (sum of training step seconds + evaluation seconds, periodic
  ones included) / cell wall seconds, where the wall clock starts after the once-per-process
  backbone load and stops after the adapter and curves are saved: the share of a cell
  spent outside the model's work (copying the backbone, attaching, saving, bookkeeping).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bench.measure import flops


def steps_to_target(losses: Sequence[float], window: int | None = None, share: float = 0.95) -> int | None:
    n = len(losses)
    if n == 0:
        return None
    w = window or max(1, n // 20)
    smooth = []
    total = 0.0
    for i, v in enumerate(losses):
        total += v
        if i >= w:
            total -= losses[i - w]
        smooth.append(total / min(i + 1, w))
    first, final = smooth[0], smooth[-1]
    if not final < first:
        return None
    target = final + (1 - share) * (first - final)
    return next(i + 1 for i, v in enumerate(smooth) if v <= target)


def train_mfu(adapter: torch.nn.Module, batch_size: int, tokens: int, steps: int, tokens_per_s: float,
              device: torch.device, logit_rows: int | None = None,
              head_share: float = 1.0, dtype: torch.dtype | None = None) -> dict[str, float | None]:
    """``mfu``, ``peak_flops`` and ``achieved_flops`` for a finished training run; the peak is
    that of ``dtype``, the precision the step's matrix products ran in (bf16 under bf16-mixed;
    default: the adapter's first parameter's dtype)."""
    dtype = dtype or next(adapter.parameters()).dtype
    peak = flops.peak_flops(device, dtype)
    if steps == 0 or tokens == 0:
        return {"mfu": None, "peak_flops": peak, "achieved_flops": 0.0}
    adapter.unfold()  # count the training-time graph (reparameterisation included)
    model = flops.StepFlops.of(adapter)
    per_token = model.per_token(batch_size, tokens / (steps * batch_size), train=True, logit_rows=logit_rows,
                                head_share=head_share)
    achieved = per_token * tokens_per_s
    return {"mfu": flops.mfu(achieved, peak), "peak_flops": peak, "achieved_flops": achieved}


def harness_overhead(wall_seconds: float, compute_seconds: float) -> float | None:
    if wall_seconds <= 0:
        return None
    return max(0.0, 1.0 - compute_seconds / wall_seconds)
