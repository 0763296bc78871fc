"""Every registered task against the task contract, offline, on tiny models.

A new task is covered by registering it: its offline splits load (or it fails with a
clear 'needs the hub' error before any model loads), each formulation that applies can
encode it, and a tiny model can be evaluated on it.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from bench.core.config import ConfigError
from bench.run.backbones import load_backbone
from bench.run.formulations import FORMULATIONS, Generation, choose_formulation
from bench.run.matrix import expand
from bench.run.trainer import evaluate
from methods import METHODS, Anatomy, AttachContext
from tasks import TASKS
from tasks.base import DataSettings, DataUnavailableError, DecodeSettings, Task
from tasks.lm_eval_tasks import LmEvalTask

ALL_TASKS = TASKS.names()
# what the offline data folder cannot serve (the README of /work/shared/data says so)
HUB_ONLY = {"glue/qqp", "glue/mnli_matched", "glue/mnli_mismatched", "glue/qnli",
            "lm_eval/arc_easy", "lm_eval/hellaswag", "lm_eval/boolq", "lm_eval/piqa", "lm_eval/winogrande"}


def _available(task: Task, data: DataSettings) -> bool:
    try:
        task.check_available(data)
    except DataUnavailableError:
        return False
    return True


def test_registry_holds_every_glue_task_e2e_and_lm_eval():
    glue = {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli"}
    assert {f"glue/{t}" for t in glue} <= set(ALL_TASKS)
    assert "e2e_nlg" in ALL_TASKS and "lm_eval/rte_local" in ALL_TASKS and "lm_eval/boolq" in ALL_TASKS


@pytest.mark.parametrize("name", ALL_TASKS)
def test_declares_metrics_and_loads_offline_or_says_it_needs_the_hub(name, data):
    task = TASKS.get(name)
    assert task.kind in ("classification", "regression", "generation")
    assert task.main_metric in {m.name for m in task.metrics}, "main metric must be one of the declared metrics"
    if task.kind == "classification":
        assert len(task.label_names) >= 2
        assert not task.label_words or len(task.label_words) == len(task.label_names)
    if name in HUB_ONLY:
        with pytest.raises(DataUnavailableError, match="needs the Hugging Face hub") as err:
            task.check_available(data)
        assert repr(name) in str(err.value)
        return
    task.check_available(data)
    for split in (task.train_split, task.eval_split):
        loaded = task.load(split, data)
        assert loaded.examples and loaded.source.startswith("local:") and loaded.fingerprint
        labels = [e.label for e in loaded.examples]
        if task.kind == "classification":
            assert set(labels) <= set(range(task.num_labels)), set(labels)
            assert len(set(labels)) == task.num_labels, f"{split} should hold every class"
        elif task.kind == "regression":
            assert all(isinstance(v, float) and math.isfinite(v) for v in labels)
        else:
            assert all(e.references and e.label in e.references for e in loaded.examples)
    assert all(e.text_a.strip() for e in loaded.examples)


def _tokenizers():
    """The WordPiece tokenizer of MiniLM / the tiny models, and SmolLM2's BPE if installed."""
    toks = [("wordpiece", load_backbone("tiny-llama", "causal_lm").tokenizer)]
    from transformers import AutoTokenizer

    from bench.run.backbones import smollm2_dir
    try:
        path = smollm2_dir()
    except Exception:  # noqa: BLE001  (a broken optional package must not fail the contract)
        path = None
    if path is not None:
        toks.append(("smollm2", AutoTokenizer.from_pretrained(path)))
    return toks


@pytest.mark.parametrize("name", ALL_TASKS)
def test_every_applicable_formulation_encodes(name, data):
    task = TASKS.get(name)
    if not _available(task, data):
        pytest.skip("hub-only (its clear error is asserted above)")
    train = task.load(task.train_split, data).examples[:4]
    evals = task.load(task.eval_split, data).examples[:4]
    for causal in (False, True):
        try:
            form_cls = choose_formulation("auto", task, causal)
        except ConfigError:
            assert task.kind == "generation" and not causal
            continue
        for tok_name, tok in _tokenizers():
            form = form_cls(task, tok, 48)  # the verbalizer checks distinct first label tokens here
            batch = form.encode(train)
            assert batch["input_ids"].shape == batch["attention_mask"].shape
            assert batch["input_ids"].shape[0] == len(train) and batch["input_ids"].shape[1] <= 48
            assert len(batch["labels"]) == len(train)
            if form_cls is Generation:
                targets = (batch["labels"] != -100).sum(1)
                assert (targets > 0).all(), f"{tok_name}: every row needs target tokens"
            eval_batch = form.encode_eval(evals)
            assert eval_batch["input_ids"].shape[0] == len(evals)


@pytest.mark.parametrize("name", [n for n in ALL_TASKS
                                  if TASKS.get(n).kind != "generation" and not isinstance(TASKS.get(n), LmEvalTask)])
def test_tiny_model_evaluation_scores_every_metric(name, data):
    task = TASKS.get(name)
    if not _available(task, data):
        pytest.skip("hub-only")
    examples = task.load(task.eval_split, data).examples[:24]
    backbone = "tiny-llama" if task.kind == "classification" else "tiny-bert"
    form_cls = choose_formulation("auto", task, backbone != "tiny-bert")
    loaded = load_backbone(backbone, form_cls.head, task.num_labels)
    model = copy.deepcopy(loaded.model)
    method = METHODS.get("lora")
    adapter = method(method.Config.from_dict({}, "lora"), None).attach(
        model, AttachContext(loaded.tokenizer, Anatomy.of(model), 0, torch.device("cpu")))
    res = evaluate(adapter, form_cls(task, loaded.tokenizer, 48), examples, 8, torch.device("cpu"))
    assert len(res.predictions) == len(examples)
    metrics = task.compute_metrics(res.predictions, examples)
    assert set(metrics) == {m.name for m in task.metrics}
    # a random tiny model may predict one class everywhere: then correlations are undefined
    assert all(math.isfinite(v) or math.isnan(v) for v in metrics.values())


def test_formulation_choice_and_errors():
    e2e, sst2, stsb = TASKS.get("e2e_nlg"), TASKS.get("glue/sst2"), TASKS.get("glue/stsb")
    assert choose_formulation("auto", e2e, True) is FORMULATIONS["generation"]
    assert choose_formulation("auto", sst2, True) is FORMULATIONS["verbalizer"]
    assert choose_formulation("auto", stsb, True) is FORMULATIONS["classification"]
    with pytest.raises(ConfigError, match="needs a causal backbone"):
        choose_formulation("auto", e2e, False)
    with pytest.raises(ConfigError, match="does not fit task 'glue/sst2'"):
        choose_formulation("generation", sst2, True)
    with pytest.raises(ConfigError, match="does not fit task 'e2e_nlg'"):
        choose_formulation("verbalizer", e2e, True)


def test_decode_is_declared_with_a_greedy_default():
    """``Task.decode`` is part of the contract: a generation task that does not set it is
    decoded greedily with at most 64 new tokens; E2E sets beam 5."""
    tokenizer = load_backbone("tiny-gpt2", "causal_lm").tokenizer

    class Plain(Task):
        name, kind = "plain_generation", "generation"

        def load(self, split, data):
            raise NotImplementedError

        def compute_metrics(self, predictions, examples):
            return {}

    assert Plain.decode == DecodeSettings(num_beams=1, max_new_tokens=64)
    kwargs = Generation(Plain(), tokenizer, 32).generate_kwargs()
    assert (kwargs["num_beams"], kwargs["max_new_tokens"]) == (1, 64) and "length_penalty" not in kwargs
    kwargs = Generation(TASKS.get("e2e_nlg"), tokenizer, 32).generate_kwargs()
    assert (kwargs["num_beams"], kwargs["length_penalty"], kwargs["early_stopping"]) == (5, 1.0, True)


@pytest.mark.parametrize("task_name", ["glue/qqp", "glue/mnli_matched", "glue/qnli", "lm_eval/boolq"])
def test_offline_run_of_hub_only_task_fails_before_any_model_loads(task_name, data, tmp_path, monkeypatch):
    from bench.run import cell as runner_cell
    from bench.run import driver

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the data check")

    monkeypatch.setattr(runner_cell, "load_backbone", no_model)
    doc = {"suites": {"t": {"methods": ["lora"], "tasks": [task_name], "backbones": ["tiny-llama"],
                            "prefix_lengths": [2], "seeds": [0], "train": {"train_steps": 1}}}}
    with pytest.raises(ConfigError, match="needs the Hugging Face hub") as err:
        driver.run_cells(expand(doc, "t"), tmp_path, data, torch.device("cpu"), log=lambda s: None)
    assert task_name in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)
    assert not (tmp_path / "records.jsonl").exists()


def test_offline_without_data_folder_names_the_folder_setting():
    none = DataSettings(data_dir=None, allow_hub=False)
    with pytest.raises(DataUnavailableError, match="PREFIX_BENCH_DATA_DIR"):
        TASKS.get("glue/rte").check_available(none)
    with pytest.raises(DataUnavailableError, match="PREFIX_BENCH_DATA_DIR"):
        TASKS.get("e2e_nlg").check_available(none)
