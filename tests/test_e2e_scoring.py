"""E2E is scored as the papers score it: beam 5, and claims only on the full test set."""

from __future__ import annotations

import pytest

from bench.core.config import ConfigError
from bench.run.matrix import expand
from tasks import TASKS


def _doc(suite: str, train: dict) -> dict:
    return {"suites": {suite: {"methods": ["prefix_tuning"], "tasks": ["e2e_nlg"], "backbones": ["tiny-llama"],
                               "prefix_lengths": [2], "seeds": [0], "train": train}}}


def test_e2e_decodes_with_beam_5_like_li_and_liang() -> None:
    assert TASKS.get("e2e_nlg").decode.num_beams == 5


def test_a_claims_suite_may_not_score_e2e_on_a_subset() -> None:
    with pytest.raises(ConfigError, match="corpus statistics"):
        expand(_doc("claims-e2e", {"eval_limit": 20}), "claims-e2e")
    assert expand(_doc("claims-e2e", {}), "claims-e2e")  # the full test set is fine
    assert expand(_doc("e2e-short", {"eval_limit": 20}), "e2e-short")  # not a claim: allowed, marked in tables


def test_only_corpus_metric_tasks_are_restricted() -> None:
    doc = _doc("claims-sst2", {"eval_limit": 20})
    doc["suites"]["claims-sst2"]["tasks"] = ["glue/sst2"]
    assert expand(doc, "claims-sst2")
