"""How a task meets a backbone: a classification head or a causal-LM verbalizer.

Both turn examples into padded tensor batches and score them with one forward pass; the
trainer and evaluator never branch on the formulation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from bench.config import ConfigError
from tasks.base import Example, Task

Batch = dict[str, torch.Tensor]


class Formulation(ABC):
    name: str = ""
    head: str = ""  # which AutoModel class the backbone is loaded as

    def __init__(self, task: Task, tokenizer: Any, max_length: int) -> None:
        self.task = task
        self.tokenizer = tokenizer
        self.max_length = max_length

    @abstractmethod
    def encode(self, examples: Sequence[Example]) -> Batch:
        """Tokenize and pad; the batch holds ``labels`` too."""

    def encode_eval(self, examples: Sequence[Example]) -> Batch:
        """Batch for evaluation; differs from ``encode`` only where targets must be hidden."""
        return self.encode(examples)

    @abstractmethod
    def scores(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """(B, C) class scores, or (B,) for regression."""

    def train_loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """The training objective for one batch (the trainer calls only this)."""
        scores = self.scores(model, batch)
        if self.task.kind == "regression":
            return F.mse_loss(scores.float(), batch["labels"].float())
        return F.cross_entropy(scores.float(), batch["labels"])

    def predict(self, model: torch.nn.Module, batch: Batch) -> list:
        """Predictions for one batch (the evaluator calls only this): class ids, floats or texts."""
        scores = self.scores(model, batch)
        if self.task.kind == "regression":
            return scores.float().tolist()
        return scores.argmax(-1).tolist()

    @staticmethod
    def count_tokens(batch: Batch) -> int:
        return int(batch["attention_mask"].sum())

    def _labels(self, examples: Sequence[Example]) -> torch.Tensor:
        dtype = torch.float32 if self.task.kind == "regression" else torch.long
        return torch.tensor([e.label for e in examples], dtype=dtype)

    @staticmethod
    def model_inputs(batch: Batch) -> Batch:
        return {k: v for k, v in batch.items() if k != "labels"}


class ClassificationHead(Formulation):
    """A sequence-classification head on the backbone (new, trained with every method)."""

    name = "classification"
    head = "seq_cls"

    def encode(self, examples: Sequence[Example]) -> Batch:
        a = [e.text_a for e in examples]
        b = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
        enc = self.tokenizer(a, b, truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt")
        batch = dict(enc)
        batch["labels"] = self._labels(examples)
        return batch

    def scores(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(**self.model_inputs(batch)).logits
        return logits.squeeze(-1) if self.task.kind == "regression" else logits


class Verbalizer(Formulation):
    """Score each label word's first token at the answer position of a causal LM.

    Inputs are left-padded so the answer position is the last one for every row, and only
    that position's logits are computed (``logits_to_keep=1``): the output layer over a
    large vocabulary otherwise dominates the step's cost.
    """

    name = "verbalizer"
    head = "causal_lm"

    def __init__(self, task: Task, tokenizer: Any, max_length: int) -> None:
        super().__init__(task, tokenizer, max_length)
        if task.kind != "classification" or not task.label_words:
            raise ConfigError(f"task {task.name!r} ({task.kind}) has no verbalizer; use formulation "
                              "'classification'")
        ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in task.label_words]
        if any(not i for i in ids):
            raise ConfigError(f"task {task.name!r}: a label word tokenizes to nothing: {task.label_words}")
        first = [i[0] for i in ids]
        if len(set(first)) != len(first):
            raise ConfigError(f"task {task.name!r}: label words {task.label_words} share a first token")
        self.label_token_ids = torch.tensor(first)

    def render(self, ex: Example) -> str:
        return self.task.prompt.format(text_a=ex.text_a, text_b=ex.text_b or "")

    def encode(self, examples: Sequence[Example]) -> Batch:
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"  # keep the answer cue at the end
        enc = self.tokenizer([self.render(e) for e in examples], truncation=True,
                             max_length=self.max_length, padding=True, return_tensors="pt")
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        batch["labels"] = self._labels(examples)
        return batch

    def scores(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        out = model(**self.model_inputs(batch), logits_to_keep=1, use_cache=False)
        ids = self.label_token_ids.to(out.logits.device)
        return out.logits[:, -1, :].index_select(-1, ids)


FORMULATIONS: dict[str, type[Formulation]] = {"classification": ClassificationHead,
                                              "verbalizer": Verbalizer}


def choose_formulation(requested: str, task: Task, causal: bool) -> type[Formulation]:
    """auto: a verbalizer for causal backbones on classification tasks, else a head."""
    if requested == "auto":
        requested = "verbalizer" if causal and task.kind == "classification" and task.label_words \
            else "classification"
    if requested == "verbalizer" and not causal:
        raise ConfigError(f"formulation 'verbalizer' needs a causal backbone (task {task.name!r})")
    return FORMULATIONS[requested]
