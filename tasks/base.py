"""The task plugin interface: a task declares its data and metrics; Python only where
data cannot say it. Formulation-specific encoding lives in ``bench.run.formulations``."""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bench.core.config import ConfigError
from bench.core.registry import Registry
from bench.core.task_facts import TaskFacts

DATA_DIR_ENV = "PREFIX_BENCH_DATA_DIR"


class DataUnavailableError(RuntimeError):
    """The task's data cannot be had with the current settings (says what would work)."""


@dataclass(frozen=True)
class Example:
    """One input. ``label`` is a class id (classification), a float (regression) or the
    target text (generation); ``references`` holds every reference for generation."""

    text_a: str
    text_b: str | None = None
    label: Any = None
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataSettings:
    """Where data comes from: a local folder of the original distributions, or the hub."""

    data_dir: Path | None = None
    allow_hub: bool = True

    @classmethod
    def from_env(cls, data_dir: str | os.PathLike | None = None,
                 allow_hub: bool | None = None) -> DataSettings:
        """The data folder, first found of: ``data_dir`` (--data-dir), $PREFIX_BENCH_DATA_DIR,
        ``data_dir`` in the user config file (``user_config_file()``), the default folder
        ``default_data_dir()`` when it exists; else none (the hub)."""
        raw = data_dir if data_dir is not None else find_data_dir()[0]
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or \
            os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes")
        hub = (not offline) if allow_hub is None else allow_hub
        return cls(Path(raw).expanduser().resolve() if raw else None, hub)


def user_config_file() -> Path:
    root = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(root) / "prefix-bench" / "config.toml"


def default_data_dir() -> Path:
    root = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(root) / "prefix-bench" / "data"


def find_data_dir() -> tuple[str | None, str]:
    """(the data folder, where that choice came from), without --data-dir."""
    if os.environ.get(DATA_DIR_ENV):
        return os.environ[DATA_DIR_ENV], f"${DATA_DIR_ENV}"
    config = user_config_file()
    if config.is_file():
        import tomllib

        try:
            value = tomllib.loads(config.read_text(encoding="utf-8")).get("data_dir")
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"{config}: cannot read the user config: {err}") from None
        if value is not None:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{config}: data_dir must be a folder path, got {value!r}")
            return value, str(config)
    if default_data_dir().is_dir():
        return str(default_data_dir()), "the default folder"
    return None, "none found (the hub)"


@dataclass
class Split:
    """Loaded examples plus where they came from (recorded in every result row)."""

    examples: list[Example]
    source: str
    fingerprint: str
    notes: str = ""


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class DecodeSettings:
    """How a generation task's outputs are decoded for evaluation (``adapter.generate``:
    beam search when ``num_beams`` > 1, else greedy; never sampled)."""

    num_beams: int = 1
    max_new_tokens: int = 64
    length_penalty: float = 1.0  # with beams only
    no_repeat_ngram_size: int = 0  # 0: no constraint


class Task(ABC):
    """A benchmark task. Subclasses (or instances of a data-driven subclass) declare
    ``kind``, labels, prompt, metrics and data sources."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "classification"  # classification | regression | generation
    label_names: tuple[str, ...] = ()
    label_words: tuple[str, ...] = ()  # verbalizer words, one per label
    prompt: str = "{text_a}"  # causal formulations: template ending where the answer starts
    metrics: tuple[Metric, ...] = ()
    main_metric: str = "accuracy"
    train_split: str = "train"
    eval_split: str = "validation"
    version: str = "1"
    citation: str = ""
    # metrics computed from statistics of the evaluated corpus (IDF, n-gram information):
    # a subset's score is comparable to nothing, so claims suites must evaluate the full split
    corpus_metrics: bool = False
    # generation tasks: decoding for evaluation. Default: greedy, at most 64 new tokens
    decode: DecodeSettings = DecodeSettings()

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.label_names)

    @property
    def majority_baseline_applies(self) -> bool:
        return self.kind == "classification"

    def check_available(self, data: DataSettings) -> None:  # noqa: B027  (optional hook)
        """Raise DataUnavailableError before any model loads if no source can serve."""

    def evaluate_adapted(self, adapter: Any, tokenizer: Any, device: Any,
                         limit: int | None = None) -> dict[str, float] | None:
        """Evaluate the trained adapter this task's own way (e.g. through lm-eval) and return
        its metrics, or None to use the shared evaluator on ``eval_split`` (the default).
        ``limit`` caps the evaluation examples (the cell's ``eval_limit``)."""
        return None

    @abstractmethod
    def load(self, split: str, data: DataSettings) -> Split:
        """Return the examples of ``split`` (``train_split`` or ``eval_split``)."""

    @abstractmethod
    def compute_metrics(self, predictions: Sequence[Any], examples: Sequence[Example]) -> dict[str, float]:
        """Score predictions (class ids, floats or texts) against the examples."""

    def depends_on(self) -> tuple[Any, ...]:
        """What besides this task's own module and declaration decides its results: other
        tasks (their identity counts) and files (their bytes count). Part of every cell id
        (``bench.core.identity``). Default: nothing."""
        return ()

    def preload(self) -> None:
        """Import what ``compute_metrics`` needs. The runner calls it before a cell's clock
        starts, so a once-per-process import is not charged to the first cell as harness
        overhead (a first import of sklearn is a second or so)."""
        return None  # default: nothing to import

    def facts(self) -> TaskFacts:
        """What the reporting layer needs to know about this task (bench/core/task_facts.py).
        A task counted on a benchmark's average (GLUE) overrides this to say how."""
        return TaskFacts(self.name, {m.name: m.higher_is_better for m in self.metrics}, self.corpus_metrics)

    def describe(self) -> str:
        return f"{self.kind}, metrics {', '.join(m.name for m in self.metrics)} (main {self.main_metric})"


TASKS: Registry[Task] = Registry("task", Task, instances=True)


def task_facts() -> dict[str, TaskFacts]:
    """Every registered task's facts, for the reporting layer (which must not import tasks)."""
    return {name: TASKS.get(name).facts() for name in TASKS.names()}


def register_task(task: Task) -> Task:
    TASKS.add(task.name, task)
    return task


def fingerprint_files(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def fingerprint_examples(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(repr((ex.text_a, ex.text_b, ex.label)).encode())
    return h.hexdigest()[:16]
