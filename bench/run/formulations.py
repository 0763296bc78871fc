"""How a task meets a backbone: a classification head or a causal-LM verbalizer.

Both turn examples into padded tensor batches and score them with one forward pass; the
trainer and evaluator never branch on the formulation.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from bench.core.config import ConfigError
from bench.run.label_head import label_rows, label_share
from tasks.base import Example, Task

Batch = dict[str, torch.Tensor]


def spans(rows: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) of each group of ``rows[i]`` consecutive rows."""
    out, lo = [], 0
    for n in rows:
        out.append((lo, lo + n))
        lo += n
    return out


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
        return self.train_losses(model, batch, [len(batch["labels"])])[0]

    def train_losses(self, model: torch.nn.Module, batch: Batch, rows: Sequence[int]) -> list[torch.Tensor]:
        """The objective of each group of consecutive rows (the first ``rows[0]``, then the
        next ``rows[1]``, ...) from one forward of the whole batch: each is ``train_loss`` of
        its group's rows alone (bench/run/packed.py trains several cells in one batch)."""
        scores = self.scores(model, batch)
        labels = batch["labels"]
        if self.task.kind == "regression":
            return [F.mse_loss(scores[lo:hi].float(), labels[lo:hi].float()) for lo, hi in spans(rows)]
        return [F.cross_entropy(scores[lo:hi].float(), labels[lo:hi]) for lo, hi in spans(rows)]

    def predict(self, model: torch.nn.Module, batch: Batch) -> list:
        """Predictions for one batch (the evaluator calls only this): class ids, floats or texts."""
        scores = self.scores(model, batch)
        if self.task.kind == "regression":
            return scores.float().tolist()
        return scores.argmax(-1).tolist()

    @staticmethod
    def count_tokens(batch: Batch) -> int:
        return int(batch["attention_mask"].sum())

    def token_lengths(self, examples: Sequence[Example]) -> list[int]:
        """Each example's real (non-padding) tokens in a training batch (``encode``): what
        length-bucketed batching sorts by. Formulations override it with one unpadded call."""
        return [self.count_tokens(self.encode([e])) for e in examples]

    def gen_tokens_per_s(self) -> float:
        """New tokens per second over every ``predict`` so far (generation only; else 0)."""
        return 0.0

    def _labels(self, examples: Sequence[Example]) -> torch.Tensor:
        dtype = torch.float32 if self.task.kind == "regression" else torch.long
        return torch.tensor([e.label for e in examples], dtype=dtype)

    def head_share(self, model: torch.nn.Module) -> float:
        """Fraction of the output layer's rows a step multiplies by (bench/measure/flops.py)."""
        return 1.0

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

    def token_lengths(self, examples: Sequence[Example]) -> list[int]:
        a = [e.text_a for e in examples]
        b = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
        return [len(ids) for ids in self.tokenizer(a, b, truncation=True, max_length=self.max_length)["input_ids"]]

    def scores(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(**self.model_inputs(batch)).logits
        return logits.squeeze(-1) if self.task.kind == "regression" else logits


class Verbalizer(Formulation):
    """Score each label word's first token at the answer position of a causal LM.

    Inputs are left-padded so the answer position is the last one for every row, and only
    that position's logits are computed (``logits_to_keep=1``), and only over the label
    words' rows of the output layer (bench/run/label_head.py): the full vocabulary product
    otherwise costs as much as a transformer layer.
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

    def token_lengths(self, examples: Sequence[Example]) -> list[int]:
        self.tokenizer.truncation_side = "left"
        enc = self.tokenizer([self.render(e) for e in examples], truncation=True, max_length=self.max_length)
        return [len(ids) for ids in enc["input_ids"]]

    def head_share(self, model: torch.nn.Module) -> float:
        return label_share(model, len(self.label_token_ids))

    def scores(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        ids = self.label_token_ids
        with label_rows(model, ids) as only_labels:  # see bench/run/label_head.py for why
            out = model(**self.model_inputs(batch), logits_to_keep=1, use_cache=False)
        logits = out.logits[:, -1, :]
        return logits if only_labels else logits.index_select(-1, ids.to(logits.device))


class Generation(Formulation):
    """Conditional generation with a causal LM: prompt -> target text.

    Training: prompt and target in one right-padded sequence, loss on the target tokens
    (and the end token) only; prompt and padding labels are -100. Logits are computed only
    from the first target position on (``logits_to_keep``), as the prompt needs none.
    Evaluation: left-padded prompts through ``adapter.generate`` (beam search, KV cache),
    so each method's own way of generating with its prefix is used. Decoding settings come
    from the task's ``decode`` (num_beams, max_new_tokens, ...).
    """

    name = "generation"
    head = "causal_lm"

    def __init__(self, task: Task, tokenizer: Any, max_length: int) -> None:
        super().__init__(task, tokenizer, max_length)
        if task.kind != "generation":
            raise ConfigError(f"formulation 'generation' needs a generation task; {task.name!r} is {task.kind}")
        # a WordPiece tokenizer (the tiny plumbing models) has no EOS: its [SEP] ends a text
        self.eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if self.eos_id is None:
            raise ConfigError(f"task {task.name!r}: the tokenizer has no end-of-text token to stop generation")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        bos = tokenizer.bos_token_id
        self.lead = [bos] if bos is not None and getattr(tokenizer, "add_bos_token", False) else []
        self.decode = task.decode
        self._new_tokens = 0
        self._gen_seconds = 0.0

    def render(self, ex: Example) -> str:
        return self.task.prompt.format(text_a=ex.text_a, text_b=ex.text_b or "")

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prompt_ids(self, ex: Example, room: int) -> list[int]:
        ids = self.lead + self._ids(self.render(ex))
        return ids[-room:]  # keep the end: the answer cue is there

    def _training_row(self, ex: Example) -> tuple[list[int], list[int]]:
        """Prompt and target ids of one training row (together at most ``max_length``)."""
        prompt = self._prompt_ids(ex, self.max_length - 1)
        target = (self._ids(" " + str(ex.label).strip()) + [self.eos_id])[:self.max_length - len(prompt)]
        return prompt, target

    def token_lengths(self, examples: Sequence[Example]) -> list[int]:
        return [sum(map(len, self._training_row(ex))) for ex in examples]

    def encode(self, examples: Sequence[Example]) -> Batch:
        rows, labels = [], []
        for ex in examples:
            prompt, target = self._training_row(ex)
            rows.append(prompt + target)
            labels.append([-100] * len(prompt) + target)
        width = max(len(r) for r in rows)
        pad = [width - len(r) for r in rows]
        return {
            "input_ids": torch.tensor([r + [self.pad_id] * n for r, n in zip(rows, pad, strict=True)]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * n for r, n in zip(rows, pad, strict=True)]),
            "labels": torch.tensor([lab + [-100] * n for lab, n in zip(labels, pad, strict=True)]),
        }

    def encode_eval(self, examples: Sequence[Example]) -> Batch:
        rows = [self._prompt_ids(ex, self.max_length) for ex in examples]
        width = max(len(r) for r in rows)
        return {
            "input_ids": torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows]),
            "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
        }

    def scores(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError("a generation formulation has no class scores")

    def train_losses(self, model: torch.nn.Module, batch: Batch, rows: Sequence[int]) -> list[torch.Tensor]:
        labels = batch["labels"]
        is_target = (labels != -100).any(0)
        first = int(is_target.nonzero()[0]) if bool(is_target.any()) else labels.shape[1] - 1
        start = max(first - 1, 0)  # the position that predicts the first target token
        # positions as an index tensor, not a count: transformers slices a count into a
        # non-contiguous view, which matmul multiplies by the output matrix expanded per row.
        # Counted from the end, as a count is: prompt tuning puts P positions in front.
        keep = torch.arange(start - labels.shape[1], 0, device=labels.device)
        out = model(**self.model_inputs(batch), logits_to_keep=keep, use_cache=False)
        logits = out.logits[:, :-1]
        targets = labels[:, start + 1:]
        # a group's mean over its own target tokens: positions before its targets are -100
        return [F.cross_entropy(logits[lo:hi].float().reshape(-1, logits.shape[-1]), targets[lo:hi].reshape(-1),
                                ignore_index=-100) for lo, hi in spans(rows)]

    def generate_kwargs(self) -> dict[str, Any]:
        d = self.decode
        kwargs: dict[str, Any] = {"num_beams": d.num_beams, "max_new_tokens": d.max_new_tokens,
                                  "do_sample": False, "eos_token_id": self.eos_id, "pad_token_id": self.pad_id,
                                  "use_cache": True}
        if d.num_beams > 1:
            kwargs.update(early_stopping=True, length_penalty=d.length_penalty)
        if d.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = d.no_repeat_ngram_size
        return kwargs

    def predict(self, model: torch.nn.Module, batch: Batch) -> list:
        ids = batch["input_ids"]
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=batch["attention_mask"], **self.generate_kwargs())
        self._gen_seconds += time.perf_counter() - t0
        texts = []
        for row in out[:, ids.shape[1]:].tolist():
            if self.eos_id in row:
                row = row[:row.index(self.eos_id) + 1]
            self._new_tokens += len(row)
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            texts.append(text.strip().split("\n")[0].strip())  # one line, as the task's targets are
        return texts

    def gen_tokens_per_s(self) -> float:
        return self._new_tokens / self._gen_seconds if self._gen_seconds > 0 else 0.0


FORMULATIONS: dict[str, type[Formulation]] = {"classification": ClassificationHead,
                                              "verbalizer": Verbalizer,
                                              "generation": Generation}


def choose_formulation(requested: str, task: Task, causal: bool) -> type[Formulation]:
    """auto: generation for generation tasks, a verbalizer for causal backbones on
    classification tasks, else a head."""
    if requested == "auto":
        if task.kind == "generation":
            requested = "generation"
        else:
            requested = "verbalizer" if causal and task.kind == "classification" and task.label_words \
                else "classification"
    if requested in ("verbalizer", "generation") and not causal:
        raise ConfigError(f"formulation {requested!r} needs a causal backbone (task {task.name!r})")
    if (requested == "generation") != (task.kind == "generation"):
        raise ConfigError(f"formulation {requested!r} does not fit task {task.name!r} ({task.kind}); "
                          f"valid: {'generation' if task.kind == 'generation' else 'classification, verbalizer'}")
    if requested not in FORMULATIONS:
        raise ConfigError(f"unknown formulation {requested!r}; valid: auto, {', '.join(FORMULATIONS)}")
    return FORMULATIONS[requested]
