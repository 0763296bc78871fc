"""GLUE (Wang et al., 2019, https://gluebenchmark.com): tasks declared as data.

Online the hub's ``nyu-mll/glue`` configs are used; offline the original ``glue_data``
TSV files in a data folder (``--data-dir`` / ``PREFIX_BENCH_DATA_DIR``). Offline files are
parsed in GLUE's own format and mapped to the hub's label ids, so both give the same
numbers.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.task_facts import TaskFacts, board_average, board_task_score
from tasks.base import (
    TASKS,
    DataSettings,
    DataUnavailableError,
    Example,
    Metric,
    Split,
    Task,
    fingerprint_examples,
    fingerprint_files,
    register_task,
    task_facts,
)
from tasks.metrics import classification_metrics

GLUE_HUB = "nyu-mll/glue"
# Pinned so a hub update cannot change the numbers silently.
GLUE_REVISION = "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c"

Row = dict[str, str]


@dataclass(frozen=True)
class GlueSpec:
    """How one GLUE task's offline TSV maps onto the hub's columns and label ids."""

    folder: str
    files: dict[str, str]  # split -> file name
    text_fields: tuple[str, ...]  # hub column names
    parse: Callable[[Row], dict[str, Any]]  # offline TSV row -> hub-shaped row
    header: bool = True
    columns: tuple[str, ...] = ()  # for header-less files
    hub_splits: dict[str, str] = field(default_factory=dict)


class GlueTask(Task):
    """A GLUE task; instances differ only in their declared data."""

    def __init__(self, *, name: str, config: str, spec: GlueSpec, label_names: tuple[str, ...],
                 label_words: tuple[str, ...], prompt: str, metrics: tuple[Metric, ...],
                 main_metric: str, kind: str = "classification", citation: str = "",
                 eval_split: str = "validation") -> None:
        self.name = name
        self.eval_split = eval_split
        self.config = config
        self.spec = spec
        self.kind = kind
        self.label_names = label_names
        self.label_words = label_words
        self.prompt = prompt
        self.metrics = metrics
        self.main_metric = main_metric
        self.citation = citation

    def facts(self) -> TaskFacts:
        facts = super().facts()
        if self.name not in GLUE_SCORE_TASKS:
            return facts
        # CoLA reports accuracy for reference only; its GLUE score is Matthews correlation
        score = ("matthews_correlation",) if self.name == "glue/cola" else tuple(m.name for m in self.metrics)
        unit = "glue/mnli" if self.name.startswith("glue/mnli_") else ""
        return dataclasses.replace(facts, board="glue", board_unit=unit, score_metrics=score)

    def _offline_path(self, split: str, data: DataSettings) -> Path | None:
        if data.data_dir is None or split not in self.spec.files:
            return None
        path = data.data_dir / "glue" / self.spec.folder / self.spec.files[split]
        return path if path.is_file() else None

    def check_available(self, data: DataSettings) -> None:
        for split in (self.train_split, self.eval_split):
            if self._offline_path(split, data) is None and not data.allow_hub:
                where = (f"{data.data_dir}/glue/{self.spec.folder}/{self.spec.files.get(split, '?')}"
                         if data.data_dir else "no data folder set (--data-dir or PREFIX_BENCH_DATA_DIR)")
                raise DataUnavailableError(
                    f"task {self.name!r} split {split!r} needs the Hugging Face hub "
                    f"({GLUE_HUB}/{self.config}) or a local file ({where}); the hub is "
                    "disabled (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and the file is missing")

    def load(self, split: str, data: DataSettings) -> Split:
        path = self._offline_path(split, data)
        if path is not None:
            rows = self._read_tsv(path)
            examples = []
            for i, r in enumerate(rows):
                try:
                    examples.append(self._example(self.spec.parse(r)))
                except (KeyError, ValueError, TypeError, DataUnavailableError) as err:  # e.g. a bad label
                    line = i + 2 if self.spec.header else i + 1
                    raise DataUnavailableError(
                        f"{path}: row {line} cannot be read ({type(err).__name__}: {err}): "
                        f"{str(dict(r))[:200]}") from None
            return Split(examples, f"local:{path}", fingerprint_files([path]))
        self.check_available(data)
        return self._load_hub(split)

    def _read_tsv(self, path: Path) -> list[Row]:
        # GLUE's TSVs contain unbalanced quotes, so quoting must be off.
        try:
            with open(path, encoding="utf-8-sig", newline="") as f:
                if self.spec.header:
                    reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                    rows = list(reader)
                    expected = len(reader.fieldnames or ())
                else:
                    expected = len(self.spec.columns)
                    rows = [dict(zip(self.spec.columns, r, strict=False))
                            for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise DataUnavailableError(f"{path}: cannot be read ({type(err).__name__}: {err})") from None
        for i, r in enumerate(rows):
            if None in r or any(v is None for v in r.values()) or len(r) < expected:
                raise DataUnavailableError(
                    f"{path}: malformed row {i + 2 if self.spec.header else i + 1}: expected "
                    f"{expected} tab-separated columns, got {str(dict(r))[:200]}")
        return rows

    def _load_hub(self, split: str) -> Split:
        try:
            import datasets
            ds = datasets.load_dataset(GLUE_HUB, self.config, split=self.spec.hub_splits.get(split, split),
                                       revision=GLUE_REVISION)
        except Exception as err:  # network errors come in many types
            raise DataUnavailableError(
                f"task {self.name!r}: could not load {GLUE_HUB}/{self.config} from the hub ({err}). "
                "Offline, point --data-dir (or PREFIX_BENCH_DATA_DIR) at a folder holding "
                f"glue/{self.spec.folder}/") from err
        examples = [self._example(r) for r in ds]
        return Split(examples, f"hub:{GLUE_HUB}/{self.config}@{GLUE_REVISION[:8]}",
                     fingerprint_examples(examples))

    def _example(self, row: dict[str, Any]) -> Example:
        texts = [str(row[f]).strip() for f in self.spec.text_fields]
        label = row["label"]
        label = float(label) if self.kind == "regression" else int(label)
        return Example(texts[0], texts[1] if len(texts) > 1 else None, label)

    def preload(self) -> None:
        import scipy.stats  # noqa: F401
        import sklearn.metrics  # noqa: F401

    def compute_metrics(self, predictions: Sequence[Any], examples: Sequence[Example]) -> dict[str, float]:
        return classification_metrics([m.name for m in self.metrics], predictions,
                                      [e.label for e in examples])


# --- offline row parsers: GLUE's TSV columns -> the hub's column names and label ids -----

_NLI2 = {"entailment": 0, "not_entailment": 1}  # RTE, QNLI on the hub
_MNLI = {"entailment": 0, "neutral": 1, "contradiction": 2}


def _label(value: str, mapping: dict[str, int] | None, task: str) -> int:
    value = value.strip()
    if mapping is None:
        if value not in ("0", "1"):
            raise DataUnavailableError(f"glue/{task}: label {value!r} is not 0 or 1")
        return int(value)
    if value not in mapping:
        raise DataUnavailableError(f"glue/{task}: label {value!r} is not one of {sorted(mapping)}")
    return mapping[value]


def _cola(row: Row) -> dict[str, Any]:
    return {"sentence": row["sentence"], "label": _label(row["label"], None, "cola")}


def _sst2(row: Row) -> dict[str, Any]:
    return {"sentence": row["sentence"], "label": _label(row["label"], None, "sst2")}


def _mrpc(row: Row) -> dict[str, Any]:
    return {"sentence1": row["#1 String"], "sentence2": row["#2 String"],
            "label": _label(row["Quality"], None, "mrpc")}


def _stsb(row: Row) -> dict[str, Any]:
    return {"sentence1": row["sentence1"], "sentence2": row["sentence2"], "label": float(row["score"])}


def _qqp(row: Row) -> dict[str, Any]:
    return {"question1": row["question1"], "question2": row["question2"],
            "label": _label(row["is_duplicate"], None, "qqp")}


def _mnli(row: Row) -> dict[str, Any]:
    return {"premise": row["sentence1"], "hypothesis": row["sentence2"],
            "label": _label(row["gold_label"], _MNLI, "mnli")}


def _qnli(row: Row) -> dict[str, Any]:
    return {"question": row["question"], "sentence": row["sentence"],
            "label": _label(row["label"], _NLI2, "qnli")}


def _rte(row: Row) -> dict[str, Any]:
    return {"sentence1": row["sentence1"], "sentence2": row["sentence2"],
            "label": _label(row["label"], _NLI2, "rte")}


def _wnli(row: Row) -> dict[str, Any]:  # WNLI's files already hold the hub's ids (1 = entailment)
    return {"sentence1": row["sentence1"], "sentence2": row["sentence2"],
            "label": _label(row["label"], None, "wnli")}


_TRAIN_DEV = {"train": "train.tsv", "validation": "dev.tsv"}
_ACC = (Metric("accuracy"),)
_F1_ACC = (Metric("f1"), Metric("accuracy"))
_NLI_PROMPT = "Premise: {text_a}\nHypothesis: {text_b}\nDoes the premise entail the hypothesis? Answer:"

# Label words are chosen so that each word's first token differs in the BPE (SmolLM2) and
# WordPiece (MiniLM, tiny models) tokenizers; tests/test_task_contract.py checks it.
register_task(GlueTask(
    name="glue/cola", config="cola",
    spec=GlueSpec("cola", _TRAIN_DEV, ("sentence",), _cola, header=False,
                  columns=("source", "label", "original_mark", "sentence")),
    label_names=("unacceptable", "acceptable"), label_words=(" no", " yes"),
    prompt="Sentence: {text_a}\nIs this sentence grammatical? Answer:",
    metrics=(Metric("matthews_correlation"), Metric("accuracy")), main_metric="matthews_correlation",
    citation="Warstadt et al., 2019, Neural Network Acceptability Judgments",
))
register_task(GlueTask(
    name="glue/sst2", config="sst2",
    spec=GlueSpec("sst2", _TRAIN_DEV, ("sentence",), _sst2),
    label_names=("negative", "positive"), label_words=(" negative", " positive"),
    prompt="Review: {text_a}\nSentiment:",
    metrics=_ACC, main_metric="accuracy",
    citation="Socher et al., 2013",
))
register_task(GlueTask(
    name="glue/mrpc", config="mrpc",
    spec=GlueSpec("mrpc", _TRAIN_DEV, ("sentence1", "sentence2"), _mrpc),
    label_names=("not_equivalent", "equivalent"), label_words=(" no", " yes"),
    prompt="Sentence 1: {text_a}\nSentence 2: {text_b}\nDo both sentences mean the same thing? Answer:",
    metrics=_F1_ACC, main_metric="f1",
    citation="Dolan and Brockett, 2005",
))
register_task(GlueTask(
    name="glue/stsb", config="stsb", kind="regression",
    spec=GlueSpec("stsb", _TRAIN_DEV, ("sentence1", "sentence2"), _stsb),
    label_names=(), label_words=(),
    prompt="Sentence 1: {text_a}\nSentence 2: {text_b}\nSimilarity (0-5):",
    metrics=(Metric("pearson"), Metric("spearmanr")), main_metric="pearson",
    citation="Cer et al., 2017, SemEval-2017 Task 1",
))
register_task(GlueTask(
    name="glue/qqp", config="qqp",
    spec=GlueSpec("qqp", _TRAIN_DEV, ("question1", "question2"), _qqp),
    label_names=("not_duplicate", "duplicate"), label_words=(" no", " yes"),
    prompt="Question 1: {text_a}\nQuestion 2: {text_b}\nDo both questions ask the same thing? Answer:",
    metrics=_F1_ACC, main_metric="f1",
    citation="Iyer et al., 2017, First Quora Dataset Release: Question Pairs",
))
for _which in ("matched", "mismatched"):
    # One task per evaluation set, as GLUE reports them; both train on MNLI's train split.
    register_task(GlueTask(
        name=f"glue/mnli_{_which}", config="mnli",
        spec=GlueSpec("mnli", {"train": "train.tsv", f"validation_{_which}": f"dev_{_which}.tsv"},
                      ("premise", "hypothesis"), _mnli),
        label_names=("entailment", "neutral", "contradiction"), label_words=(" yes", " maybe", " no"),
        prompt=_NLI_PROMPT, metrics=_ACC, main_metric="accuracy", eval_split=f"validation_{_which}",
        citation="Williams et al., 2018, A Broad-Coverage Challenge Corpus for Sentence Understanding",
    ))
register_task(GlueTask(
    name="glue/qnli", config="qnli",
    spec=GlueSpec("qnli", _TRAIN_DEV, ("question", "sentence"), _qnli),
    label_names=("entailment", "not_entailment"), label_words=(" yes", " no"),
    prompt="Question: {text_a}\nSentence: {text_b}\nDoes the sentence answer the question? Answer:",
    metrics=_ACC, main_metric="accuracy",
    citation="Rajpurkar et al., 2016 (SQuAD), recast by Wang et al., 2019",
))
register_task(GlueTask(
    name="glue/rte", config="rte",
    spec=GlueSpec("rte", _TRAIN_DEV, ("sentence1", "sentence2"), _rte),
    label_names=("entailment", "not_entailment"), label_words=(" yes", " no"),
    prompt=_NLI_PROMPT, metrics=_ACC, main_metric="accuracy",
    citation="Dagan et al., 2006; Bar Haim et al., 2006; Giampiccolo et al., 2007; Bentivogli et al., 2009",
))
register_task(GlueTask(
    name="glue/wnli", config="wnli",
    spec=GlueSpec("wnli", _TRAIN_DEV, ("sentence1", "sentence2"), _wnli),
    label_names=("not_entailment", "entailment"), label_words=(" no", " yes"),
    prompt=_NLI_PROMPT, metrics=_ACC, main_metric="accuracy",
    citation="Levesque et al., 2011, The Winograd Schema Challenge",
))

# --- the GLUE score ---------------------------------------------------------------------

GLUE_SCORE_TASKS = ("glue/cola", "glue/sst2", "glue/mrpc", "glue/stsb", "glue/qqp",
                    "glue/mnli_matched", "glue/mnli_mismatched", "glue/qnli", "glue/rte", "glue/wnli")


def glue_task_score(task_name: str, metrics: dict[str, float]) -> float | None:
    """One number per task as GLUE's leaderboard computes it: the mean of the task's
    official metrics (F1 and accuracy for MRPC/QQP, Pearson and Spearman for STS-B;
    Matthews correlation alone for CoLA). None if any of them is missing."""
    return board_task_score(TASKS.get(task_name).facts(), metrics)


def glue_average(scores_by_task: dict[str, dict[str, float]]) -> tuple[float | None, list[str]]:
    """The GLUE average over the tasks present: (mean of per-task scores, tasks missing).

    ``scores_by_task`` maps task name -> its metrics (e.g. a record's ``metrics``); tasks
    outside GLUE are ignored. As on GLUE's leaderboard, MNLI counts once: the mean of its
    matched and mismatched scores (whichever are present). The mean covers only the tasks
    given, so show the missing list next to it: an average over fewer tasks is not GLUE's
    number."""
    return board_average(task_facts(), "glue", scores_by_task)
