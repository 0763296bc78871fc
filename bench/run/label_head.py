"""Score only the label words' rows of a causal LM's output layer.

A verbalizer needs two or three logits at one position, but the backbone's output layer
multiplies by the whole vocabulary matrix (SmolLM2: 49,152 x 576, 113 MB in fp32). While
training, the input gradient of that product needs the matrix again, and with
``logits_to_keep=1`` transformers slices a non-contiguous ``(B, 1, d)`` view, which
``torch.matmul`` cannot fold into one ``mm`` when it requires grad: it runs a ``bmm`` against
the matrix expanded B times. Scoring the label rows alone avoids both (its speed is
measured by ``nox -s perf``). Every method on a causal LM scores through this head.

``label_rows(model, ids)`` swaps the output layer, for one call, for a module that
multiplies by ``weight[ids]`` only. The result equals the full layer's logits at ``ids``
(``index_select`` keeps the gradient path, so a trained or tied output matrix still learns).
Not a library feature: transformers offers ``logits_to_keep`` over positions, not over
vocabulary rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class LabelRows(nn.Module):
    def __init__(self, head: nn.Linear, ids: torch.Tensor) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("ids", ids, persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        bias = None if self.head.bias is None else self.head.bias.index_select(0, self.ids)
        return F.linear(hidden, self.head.weight.index_select(0, self.ids), bias)


def _output_owner(model: nn.Module) -> nn.Module | None:
    """The first (sub)module that owns the output layer: the HF model inside an adapter or
    a PEFT wrapper."""
    for m in model.modules():
        getter = getattr(m, "get_output_embeddings", None)
        if callable(getter) and hasattr(m, "set_output_embeddings") and isinstance(getter(), nn.Linear):
            return m
    return None


@contextmanager
def label_rows(model: nn.Module, ids: torch.Tensor) -> Iterator[bool]:
    """Within the block, ``model``'s logits have ``len(ids)`` columns, in the order of
    ``ids``. Yields False (and changes nothing) when no plain ``nn.Linear`` output layer is
    found; the caller then selects the columns from full logits itself."""
    owner = _output_owner(model)
    if owner is None:
        yield False
        return
    head = owner.get_output_embeddings()
    owner.set_output_embeddings(LabelRows(head, ids.to(head.weight.device)))
    try:
        yield True
    finally:
        owner.set_output_embeddings(head)


def label_share(model: nn.Module, n_labels: int) -> float:
    """The fraction of the output layer's rows that ``label_rows`` multiplies by (1.0 when
    it cannot swap the layer)."""
    owner = _output_owner(model)
    return 1.0 if owner is None else n_labels / owner.get_output_embeddings().weight.shape[0]
