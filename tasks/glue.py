"""GLUE (Wang et al., 2019, https://gluebenchmark.com): tasks declared as data.

Online the hub's ``nyu-mll/glue`` configs are used; offline the original ``glue_data``
TSV files in a data folder (``--data-dir`` / ``PREFIX_BENCH_DATA_DIR``). Offline files are
parsed in GLUE's own format and mapped to the hub's label ids, so both give the same
numbers.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.base import (
    DataSettings,
    DataUnavailableError,
    Example,
    Metric,
    Split,
    Task,
    fingerprint_examples,
    fingerprint_files,
    register_task,
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
                 main_metric: str, kind: str = "classification", citation: str = "") -> None:
        self.name = name
        self.config = config
        self.spec = spec
        self.kind = kind
        self.label_names = label_names
        self.label_words = label_words
        self.prompt = prompt
        self.metrics = metrics
        self.main_metric = main_metric
        self.citation = citation

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
            examples = [self._example(self.spec.parse(r)) for r in rows]
            return Split(examples, f"local:{path}", fingerprint_files([path]))
        self.check_available(data)
        return self._load_hub(split)

    def _read_tsv(self, path: Path) -> list[Row]:
        # GLUE's TSVs contain unbalanced quotes, so quoting must be off.
        with open(path, encoding="utf-8-sig", newline="") as f:
            if self.spec.header:
                reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                rows = list(reader)
                expected = len(reader.fieldnames or ())
            else:
                expected = len(self.spec.columns)
                rows = [dict(zip(self.spec.columns, r, strict=False))
                        for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
        for i, r in enumerate(rows):
            if None in r or any(v is None for v in r.values()) or len(r) < expected:
                raise DataUnavailableError(
                    f"{path}: malformed row {i + 2 if self.spec.header else i + 1}: expected "
                    f"{expected} tab-separated columns")
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

    def compute_metrics(self, predictions: Sequence[Any], examples: Sequence[Example]) -> dict[str, float]:
        return classification_metrics([m.name for m in self.metrics], predictions,
                                      [e.label for e in examples])


def _sst2(row: Row) -> dict[str, Any]:
    return {"sentence": row["sentence"], "label": int(row["label"])}


register_task(GlueTask(
    name="glue/sst2", config="sst2",
    spec=GlueSpec("sst2", {"train": "train.tsv", "validation": "dev.tsv"}, ("sentence",), _sst2),
    label_names=("negative", "positive"), label_words=(" negative", " positive"),
    prompt="Review: {text_a}\nSentiment:",
    metrics=(Metric("accuracy"),), main_metric="accuracy",
    citation="Socher et al., 2013",
))
