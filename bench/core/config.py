"""Validated configuration objects. Config flows one way: defaults -> suite -> cell ->
per-method overrides -> one frozen object; unknown keys and wrong types are errors."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid. Raised before any model is loaded."""


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (tuple, list):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and all(
            _type_ok(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def unknown_keys(where: str, unknown: list[str], valid: list[str] | tuple[str, ...]) -> str:
    """The message for keys that are not valid: each with the valid key it most resembles
    (a typo such as ``train_step`` names ``train_steps``), then every valid key."""
    def one(key: str) -> str:
        hint = difflib.get_close_matches(str(key), list(valid), n=1)
        return f"{key!r} (did you mean {hint[0]!r}?)" if hint else repr(key)
    return f"{where}: unknown key(s) {', '.join(one(k) for k in unknown)}; valid keys: {', '.join(valid)}"


def check_fields(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``values``: unknown keys and wrong types raise ConfigError
    naming ``where``, the key, the value and what is allowed."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a table of options, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(unknown_keys(where, unknown, names))
    clean = {}
    for key, value in values.items():
        tp = hints[key]
        if not _type_ok(value, tp):
            shown = str(tp).replace("typing.", "") if not isinstance(tp, type) else tp.__name__
            raise ConfigError(f"{where}: key {key!r} has value {value!r}, expected {shown}")
        if isinstance(value, float) and not math.isfinite(value):  # TOML allows nan and inf
            raise ConfigError(f"{where}: key {key!r} has value {value!r}, expected a finite number")
        if tp is float or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                           and float in typing.get_args(tp) and isinstance(value, int)):
            value = float(value)
        if isinstance(value, list) and typing.get_origin(tp) is tuple:
            value = tuple(value)
        clean[key] = value
    try:
        return cls(**clean)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def positive(name: str, value: float | int | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")


def finite(name: str, value: float | int | None) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")


# Upper bounds, from what a run survives. Past them a cell does not fail as a row: it takes
# the process down (the kernel's OOM killer ends the whole matrix under the local executor)
# or cannot finish. Each bound says why in its error message.
LIMITS: dict[str, tuple[int, str]] = {
    "prefix_length": (4096, "the prefix occupies positions of the backbone's context, and 4096 is half the "
                            "longest context here (SmolLM2-135M: 8192); memory grows with P, and at P = 10^8 "
                            "the kernel kills the run"),
    "seed": (2**32 - 1, "numpy and torch seeds are unsigned 32-bit numbers"),
    "train_steps": (1_000_000, "a million steps is weeks at the fastest step measured here"),
    "batch_size": (4096, "every example of a batch is in memory at once, activations included"),
    "eval_batch_size": (4096, "every example of a batch is in memory at once, activations included"),
    "max_length": (8192, "the longest context of any registered backbone (SmolLM2-135M: 8192 positions)"),
    "threads": (1024, "far above any machine's cores; torch starts one OS thread per thread"),
}
# Training precisions (bench/run/precision.py): "auto" picks bf16-mixed where the device runs
# bf16 fast and fp32 elsewhere, resolved once before a cell's id is computed.
PRECISIONS = ("auto", "fp32", "bf16-mixed")
# The sampler plans every step's example indices before the first step (bench/run/trainer.py):
# train_steps x batch_size Python ints, about 0.4 GB at this bound.
MAX_PLANNED_EXAMPLES = 10_000_000
# A held-out slice of half the training examples or more would train on less than it selects on.
MAX_HOLDOUT = 0.5


def at_most(name: str, value: int | None, where: str = "") -> None:
    """ConfigError if ``value`` is above ``LIMITS[name]``, saying what the bound protects."""
    high, why = LIMITS[name]
    if value is not None and value > high:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}{name} {value!r} is above {high}, the largest allowed: {why}")


EVAL_ORDERS = ("given", "length")


@dataclass(frozen=True)
class TrainConfig:
    """Training and evaluation settings shared by every method (one trainer for all)."""

    lr: float | None = field(default=None, metadata={
        "help": "peak learning rate; None takes the method's default_lr"})
    train_steps: int = field(default=200, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "training examples per step"})
    eval_batch_size: int = field(default=64, metadata={"help": "examples per evaluation forward"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps of linear warm-up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    max_length: int = field(default=128, metadata={"help": "tokens per example (truncation)"})
    train_limit: int | None = field(default=None, metadata={
        "help": "cap on training examples drawn from the split (None: all)"})
    eval_limit: int | None = field(default=None, metadata={
        "help": "cap on evaluation examples (None: the whole split)"})
    eval_every: int = field(default=0, metadata={
        "help": "evaluate every N steps for the convergence curve (0: only at the end)"})
    log_every: int = field(default=10, metadata={"help": "progress-bar refresh interval"})
    formulation: str = field(default="auto", metadata={
        "help": "auto | classification (a head) | verbalizer (causal-LM label words) | "
                "generation (causal-LM text targets)"})
    precision: str = field(default="auto", metadata={
        "help": "auto | fp32 | bf16-mixed (bf16 matmuls under autocast, fp32 trainable weights and "
                "optimizer state); auto: bf16-mixed on CUDA with bf16 and on CPUs with avx512_bf16 or "
                "amx_bf16 (not in --deterministic mode), else fp32"})
    compile: bool = field(default=False, metadata={
        "help": "run the model's forward through torch.compile (falls back to eager, saying why)"})
    bucket_window: int = field(default=0, metadata={
        "help": "batches per length-sorting window: each window of the seeded order is sorted by token "
                "length, cut into batches and the batches shuffled (0: off, plain seeded batches; the default "
                "and standard suites set 16: the same dev accuracy on the MiniLM SST-2 pilot with 13% of the "
                "tokens padding instead of 67%, README 'The standard suite')"})
    eval_order: str = field(default="given", metadata={
        "help": "given | length: length evaluates the examples sorted by token length, so each evaluation "
                "batch holds examples of like length and pads little, and hands the predictions back in the "
                "given order; the same predictions, since no method's output depends on its batch "
                "(tests/test_padding_invariance.py)"})
    holdout: float = field(default=0.0, metadata={
        "help": "fraction in [0, 0.5) of the training examples (after train_limit) held out, drawn with a "
                "fixed seed (every seed and every search trial is scored on the same examples) and never "
                "trained on; periodic evaluation, early stopping and the learning-rate search read it, never "
                "the evaluation split (0: none)"})
    patience: int = field(default=0, metadata={
        "help": "stop when the held-out main metric has not improved for this many evaluations (one every "
                "eval_every steps) and keep the best evaluation's parameters; needs holdout > 0 and "
                "eval_every > 0 (0: off, every step of train_steps runs)"})

    def __post_init__(self) -> None:
        for name in ("lr", "warmup_ratio", "weight_decay", "max_grad_norm"):
            finite(name, getattr(self, name))
        positive("lr", self.lr)
        for name in ("train_steps", "batch_size", "eval_batch_size", "max_length", "log_every"):
            positive(name, getattr(self, name))
        for name in ("train_steps", "batch_size", "eval_batch_size", "max_length"):
            at_most(name, getattr(self, name))
        if self.train_steps * self.batch_size > MAX_PLANNED_EXAMPLES:
            raise ConfigError(f"train_steps x batch_size = {self.train_steps * self.batch_size} is above "
                              f"{MAX_PLANNED_EXAMPLES}, the largest allowed: the sampler plans every step's "
                              "examples before the first step")
        positive("train_limit", self.train_limit)
        positive("eval_limit", self.eval_limit)
        positive("eval_every", self.eval_every, allow_zero=True)
        positive("weight_decay", self.weight_decay, allow_zero=True)
        positive("max_grad_norm", self.max_grad_norm)
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        positive("bucket_window", self.bucket_window, allow_zero=True)
        if self.eval_order not in EVAL_ORDERS:
            raise ConfigError(f"eval_order must be one of {', '.join(EVAL_ORDERS)}, got {self.eval_order!r:.100}")
        if not 0 <= self.holdout < MAX_HOLDOUT:
            raise ConfigError(f"holdout must be in [0, {MAX_HOLDOUT}) (a fraction of the training examples held "
                              f"out for selection; the rest trains), got {self.holdout!r}")
        positive("patience", self.patience, allow_zero=True)
        if self.patience and (self.holdout <= 0 or self.eval_every <= 0):
            raise ConfigError(f"patience = {self.patience} needs holdout > 0 and eval_every > 0 (early stopping "
                              "reads the held-out slice every eval_every steps), got holdout = "
                              f"{self.holdout!r}, eval_every = {self.eval_every!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.formulation not in ("auto", "classification", "verbalizer", "generation"):
            raise ConfigError(
                f"formulation {self.formulation!r} is not one of auto, classification, verbalizer, generation")
