"""E2E's hub settings: the revision and the training split come from the environment, so the
published workflow can pin the one and train on the same split as the committed tables."""

from __future__ import annotations

import sys
import types

import pytest

from tasks.base import DataSettings
from tasks.e2e import E2E_HUB, REVISION_ENV, TRAIN_SPLIT_ENV, E2ETask

ROWS = [{"meaning_representation": "name[A]", "human_reference": "A is a place."},
        {"meaning_representation": "name[A]", "human_reference": "There is A."}]


@pytest.fixture
def hub(monkeypatch):
    """A stand-in ``datasets`` module recording each load_dataset call."""
    calls: list[dict] = []

    def load_dataset(path, split=None, revision=None):
        calls.append({"path": path, "split": split, "revision": revision})
        return ROWS

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv(REVISION_ENV, raising=False)
    monkeypatch.delenv(TRAIN_SPLIT_ENV, raising=False)
    return calls


ONLINE = DataSettings(None, True)


def test_defaults_are_the_train_split_at_main(hub):
    split = E2ETask().load("train", ONLINE)
    assert hub == [{"path": E2E_HUB, "split": "train", "revision": "main"}]
    assert split.source == f"hub:{E2E_HUB}@main" and split.notes == ""


def test_revision_and_training_split_from_the_environment(hub, monkeypatch):
    monkeypatch.setenv(REVISION_ENV, "0123abcd")
    monkeypatch.setenv(TRAIN_SPLIT_ENV, "validation")
    train, test = E2ETask().load("train", ONLINE), E2ETask().load("test", ONLINE)
    assert [c["split"] for c in hub] == ["validation", "test"]  # only training is redirected
    assert {c["revision"] for c in hub} == {"0123abcd"}
    assert train.source == f"hub:{E2E_HUB}@0123abcd" and f"{TRAIN_SPLIT_ENV}=validation" in train.notes
    assert test.notes == "" and len(train.examples) == 2 and len(test.examples) == 1  # grouped by MR


def test_a_bad_training_split_is_refused(hub, monkeypatch):
    monkeypatch.setenv(TRAIN_SPLIT_ENV, "test")  # training on the evaluation split: never
    with pytest.raises(ValueError, match="train, validation"):
        E2ETask().load("train", ONLINE)
    assert hub == []
