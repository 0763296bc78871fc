"""E2E NLG Challenge (Novikova et al., SIGDIAL 2017, https://aclanthology.org/W17-5525):
restaurant meaning representations (MRs) -> one-sentence descriptions, several human
references per MR. The data-to-text task of Prefix-Tuning (Li & Liang, 2021).

Training uses one example per (MR, reference) pair; evaluation one example per unique MR,
scored against *all* of its references with the challenge's five metrics.

Online the hub's ``tuetschek/e2e_nlg`` (the challenge organiser's copy: train / validation
/ test with ``meaning_representation`` and ``human_reference``). Offline the challenge's
CSVs in ``<data-dir>/e2e/``; the train split is not available offline, so training uses
``devset.csv`` and evaluation ``testset_w_refs.csv``; the record's ``data_notes`` says so.

Two settings for the hub path, read when a split loads: ``$PREFIX_BENCH_E2E_REVISION`` (the hub
revision, default ``main``: no commit sha has been looked up yet) and
``$PREFIX_BENCH_E2E_TRAIN_SPLIT`` (``train``, the default, or ``validation``: the challenge's
devset, which is what the offline folder trains on, so an online run can train on the same data
as the committed tables).
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.base import (
    DataSettings,
    DataUnavailableError,
    DecodeSettings,
    Example,
    Metric,
    Split,
    Task,
    fingerprint_examples,
    fingerprint_files,
    register_task,
)
from tasks.generation_metrics import e2e_metrics, meteor_scorer

E2E_HUB = "tuetschek/e2e_nlg"
# No commit sha of the hub repository could be looked up from this machine (no hub
# access); "main" is recorded in data_source so a result says which state it used. Pinned
# instead: the challenge's own files at a fixed commit, sha256-checked (tasks/e2e_files.py).
E2E_REVISION = "main"
REVISION_ENV = "PREFIX_BENCH_E2E_REVISION"
TRAIN_SPLIT_ENV = "PREFIX_BENCH_E2E_TRAIN_SPLIT"
HUB_TRAIN_SPLITS = ("train", "validation")

OFFLINE_SUBSTITUTION = ("offline E2E: trained on devset.csv (the official train split is not in the "
                        "offline data folder), evaluated on testset_w_refs.csv")


def hub_revision() -> str:
    """The hub revision to load: ``$PREFIX_BENCH_E2E_REVISION``, else ``E2E_REVISION``."""
    return os.environ.get(REVISION_ENV, "").strip() or E2E_REVISION


def hub_train_split() -> str:
    """The hub split that trains: ``$PREFIX_BENCH_E2E_TRAIN_SPLIT``, else ``train``."""
    split = os.environ.get(TRAIN_SPLIT_ENV, "").strip() or "train"
    if split not in HUB_TRAIN_SPLITS:
        raise ValueError(f"{TRAIN_SPLIT_ENV}={split!r}: valid values are {', '.join(HUB_TRAIN_SPLITS)}")
    return split


class E2ETask(Task):
    name = "e2e_nlg"
    kind = "generation"
    prompt = "Meaning representation: {text_a}\nDescription:"
    metrics = tuple(Metric(m) for m in ("bleu", "nist", "meteor", "rouge_l", "cider"))
    main_metric = "bleu"
    train_split = "train"
    eval_split = "test"
    version = "2"  # 2: beam 5, as Li & Liang decode
    citation = "Novikova, Dušek and Rieser, 2017, The E2E Dataset: New Challenges For End-to-End Generation"
    decode = DecodeSettings(num_beams=5)  # Li & Liang decode E2E with beam 5
    # CIDEr's IDF and NIST's information weights are statistics of the evaluated corpus: the
    # same outputs score CIDEr 2.32 on 20 MRs and 2.84 inside the 630-MR test set
    corpus_metrics = True

    _OFFLINE_FILES = {"train": "devset.csv", "validation": "devset.csv", "test": "testset_w_refs.csv"}

    def _offline_path(self, split: str, data: DataSettings) -> Path | None:
        if data.data_dir is None:
            return None
        path = data.data_dir / "e2e" / self._OFFLINE_FILES[split]
        return path if path.is_file() else None

    def check_available(self, data: DataSettings) -> None:
        for split in (self.train_split, self.eval_split):
            if self._offline_path(split, data) is None and not data.allow_hub:
                where = (f"{data.data_dir}/e2e/{self._OFFLINE_FILES[split]}" if data.data_dir
                         else "no data folder set (--data-dir or PREFIX_BENCH_DATA_DIR)")
                raise DataUnavailableError(
                    f"task {self.name!r} split {split!r} needs the Hugging Face hub ({E2E_HUB}) or a "
                    f"local file ({where}); the hub is disabled (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) "
                    "and the file is missing")

    def load(self, split: str, data: DataSettings) -> Split:
        if split not in self._OFFLINE_FILES:
            raise ValueError(f"task {self.name!r} has no split {split!r}; valid: {sorted(self._OFFLINE_FILES)}")
        path = self._offline_path(split, data)
        if path is not None:
            with open(path, encoding="utf-8", newline="") as f:
                pairs = [(r["mr"], r["ref"]) for r in csv.DictReader(f)]
            notes = OFFLINE_SUBSTITUTION if split == "train" else ""
            examples = self._examples(pairs, grouped=split != "train")
            return Split(examples, f"local:{path}", fingerprint_files([path]), notes)
        self.check_available(data)
        revision, hub_split = hub_revision(), hub_train_split() if split == "train" else split
        notes = (f"hub E2E: trained on the validation split (the challenge's devset, as the offline data "
                 f"folder), {TRAIN_SPLIT_ENV}={hub_split}" if hub_split != split else "")
        try:
            import datasets
            ds = datasets.load_dataset(E2E_HUB, split=hub_split, revision=revision)
        except Exception as err:  # network errors come in many types
            raise DataUnavailableError(
                f"task {self.name!r}: could not load {E2E_HUB} from the hub ({err}). Offline, point "
                "--data-dir (or PREFIX_BENCH_DATA_DIR) at a folder holding e2e/devset.csv and "
                "e2e/testset_w_refs.csv") from err
        pairs = [(r["meaning_representation"], r["human_reference"]) for r in ds]
        examples = self._examples(pairs, grouped=split != "train")
        return Split(examples, f"hub:{E2E_HUB}@{revision}", fingerprint_examples(examples), notes)

    @staticmethod
    def _examples(pairs: Sequence[tuple[str, str]], grouped: bool) -> list[Example]:
        """Training: one example per pair. Evaluation: one per unique MR in first-seen
        order, with every reference of that MR."""
        refs: dict[str, list[str]] = {}
        for mr, ref in pairs:
            refs.setdefault(mr.strip(), []).append(ref.strip())
        if not grouped:
            return [Example(mr.strip(), label=ref.strip(), references=tuple(refs[mr.strip()]))
                    for mr, ref in pairs]
        return [Example(mr, label=rs[0], references=tuple(rs)) for mr, rs in refs.items()]

    def preload(self) -> None:
        import sacrebleu  # noqa: F401
        try:
            import pycocoevalcap.cider.cider  # noqa: F401
        except ImportError:  # the metrics module says what to install when it is needed
            return
        if shutil.which("java") is not None:
            meteor_scorer()  # its JVM starts once per process, before the cell's clock

    def compute_metrics(self, predictions: Sequence[Any], examples: Sequence[Example]) -> dict[str, float]:
        if len(predictions) != len(examples):
            raise ValueError(f"{len(predictions)} outputs for {len(examples)} MRs")
        return e2e_metrics([str(p) for p in predictions], [e.references for e in examples])


register_task(E2ETask())
