"""What a cell leaves beside its row: adapter states as safetensors (never pickle), loss
curves and generated samples, each written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from bench.core.records import write_atomic
from bench.run.trainer import TrainStats
from tasks.base import Example


def save_samples(path: Path, examples: list[Example], predictions: list, limit: int = 100) -> str:
    """The first ``limit`` generated texts with their input and references, as JSON lines
    beside the row (a metric alone does not show whether outputs are sentences)."""
    lines = [json.dumps({"input": ex.text_a, "output": pred, "references": list(ex.references)},
                        ensure_ascii=False) + "\n"
             for ex, pred in list(zip(examples, predictions, strict=True))[:limit]]
    write_atomic(path, "".join(lines).encode("utf-8"))
    return str(path)


def save_curves(path: Path, stats: TrainStats) -> str:
    """Per-step loss, periodic evaluations (``evals_on``: of the evaluation split, or of the
    held-out slice when the cell has one) and method step logs (e.g. gate values), kept
    beside the row so the record stays flat."""
    write_atomic(path, json.dumps({"loss": stats.losses, "step_seconds": stats.step_seconds,
                                   "evals": stats.evals, "evals_on": stats.evals_on,
                                   "step_logs": stats.step_logs}).encode())
    return str(path)


def save_adapter(adapter: nn.Module, path: Path) -> tuple[str, int]:
    """Trained state; returns (path, bytes)."""
    return save_state(adapter.trainable_state_dict(), path)


def save_state(state: dict[str, torch.Tensor], path: Path) -> tuple[str, int]:
    """Tensors as safetensors; returns (path, bytes)."""
    from safetensors.torch import save

    write_atomic(path, save({k: v.detach().contiguous().cpu().clone() for k, v in state.items()}))
    return str(path), path.stat().st_size


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """True when two states hold the very same tensors (a method whose deployed state is its
    trained state): then one file serves both, with no copy of e.g. a fully tuned model."""
    return a.keys() == b.keys() and all(a[k].data_ptr() == b[k].data_ptr() and a[k].shape == b[k].shape
                                        for k in a)
