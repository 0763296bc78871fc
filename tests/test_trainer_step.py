"""How the shared trainer runs a step: length-bucketed batches (same examples per epoch,
seeded, less padding), fused/foreach AdamW with gradients kept (the same updates as the
single-tensor loop), and torch.compile's fallback to eager (it says why; the row records it)."""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter

import pytest
import torch

from bench.core.config import ConfigError, TrainConfig
from bench.run import trainer
from bench.run.backbones import load_backbone
from bench.run.data import load_split
from bench.run.formulations import FORMULATIONS
from bench.run.trainer import batches_for_training, padding_fraction, plan_training, train
from methods import METHODS, Anatomy, AttachContext
from tasks import TASKS


def _lengths(n: int, seed: int = 7) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 60, (n,), generator=g).tolist()


def _flat(plan: list[list[int]]) -> list[int]:
    return [i for idx in plan for i in idx]


@pytest.mark.parametrize(("n", "batch", "steps", "window"), [
    (50, 8, 30, 3),  # several epochs; epochs end inside batches (50 is no multiple of 8)
    (1000, 16, 40, 10),  # part of one epoch, as a real split
    (5, 8, 6, 2),  # a split smaller than a batch: cycled
    (64, 8, 20, 100),  # a window longer than the run
])
def test_buckets_keep_every_epochs_examples_and_are_seeded(n, batch, steps, window):
    lengths = _lengths(n)
    plain = batches_for_training(n, batch, steps, seed=3)
    bucketed = batches_for_training(n, batch, steps, seed=3, lengths=lambda idx: [lengths[i] for i in idx],
                                    window=window)
    assert len(bucketed) == steps and all(len(idx) == batch for idx in bucketed)
    a, b = _flat(plain), _flat(bucketed)
    for start in range(0, len(a), n):  # epoch by epoch: the same examples, each once
        assert Counter(a[start:start + n]) == Counter(b[start:start + n])
    assert bucketed == batches_for_training(n, batch, steps, seed=3, lengths=lambda idx: [lengths[i] for i in idx],
                                            window=window)
    other = batches_for_training(n, batch, steps, seed=4, lengths=lambda idx: [lengths[i] for i in idx],
                                 window=window)
    assert other != bucketed
    if n >= batch:
        assert padding_fraction(bucketed, lengths.__getitem__) < padding_fraction(plain, lengths.__getitem__)
    # without lengths, or with window 0: today's seeded batches
    assert batches_for_training(n, batch, steps, seed=3, window=window) == plain
    assert batches_for_training(n, batch, steps, seed=3, lengths=lambda idx: [0] * len(idx), window=0) == plain


def test_a_window_sorts_its_batches_by_length_and_shuffles_them():
    lengths = list(range(1, 33))  # example i has i + 1 tokens
    plan = batches_for_training(32, 4, 8, seed=0, lengths=lambda idx: [lengths[i] for i in idx], window=8)
    # one window of the whole epoch: batches are consecutive lengths, in a seeded order
    assert sorted(sorted(idx) for idx in plan) == [list(range(k, k + 4)) for k in range(0, 32, 4)]
    assert [sorted(idx) for idx in plan] != [list(range(k, k + 4)) for k in range(0, 32, 4)]
    assert padding_fraction(plan, lengths.__getitem__) < 0.1


def test_bucket_window_is_checked():
    with pytest.raises(ConfigError, match="bucket_window must be >= 0"):
        TrainConfig(bucket_window=-1)
    assert TrainConfig().bucket_window == 0  # off by default: see README "Performance"


def _formulation(name: str, task: str, backbone: str, max_length: int = 32):
    loaded = load_backbone(backbone, FORMULATIONS[name].head, TASKS.get(task).num_labels)
    return FORMULATIONS[name](TASKS.get(task), loaded.tokenizer, max_length), loaded


@pytest.mark.parametrize(("name", "task", "backbone"), [
    ("verbalizer", "glue/sst2", "tiny-llama"), ("classification", "glue/rte", "tiny-bert"),
    ("generation", "e2e_nlg", "tiny-gpt2")])
def test_token_lengths_are_the_encoded_rows_lengths(name, task, backbone, data):
    form, _ = _formulation(name, task, backbone, max_length=24)  # short: truncation is exercised
    split = TASKS.get(task)
    examples = load_split(task, split.eval_split, data).examples[:12]
    assert form.token_lengths(examples) == form.encode(examples)["attention_mask"].sum(1).tolist()


def test_buckets_cut_the_padding_of_sst2(data):
    """SST-2 sentences run from 1 to ~60 tokens: plain batches of 16 are mostly padding."""
    form, _ = _formulation("verbalizer", "glue/sst2", "tiny-llama", max_length=64)
    examples = load_split("glue/sst2", "train", data).examples
    cfg = TrainConfig(train_steps=40, batch_size=16, bucket_window=10)
    plan, after, before = plan_training(form, examples, cfg, seed=0)
    plain, same, _ = plan_training(form, examples, dataclasses.replace(cfg, bucket_window=0), seed=0)
    assert Counter(_flat(plan)) == Counter(_flat(plain)) and same == before
    assert before > 0.3 and after < before / 3, (before, after)


def _tiny_run(steps: int = 4, **cfg_kw):
    form, loaded = _formulation("verbalizer", "glue/sst2", "tiny-llama")
    model = copy.deepcopy(loaded.model)
    cls = METHODS.get("prefix_tuning")
    torch.manual_seed(0)
    adapter = cls(cls.Config(), 3).attach(model, AttachContext(loaded.tokenizer, Anatomy.of(model), 0))
    cfg = TrainConfig(train_steps=steps, batch_size=4, max_length=32, lr=1e-2, precision="fp32", **cfg_kw)
    return adapter, form, cfg


@pytest.fixture
def sst2(data):
    return load_split("glue/sst2", "train", data).examples[:64]


def test_fused_or_foreach_adamw_updates_as_the_single_tensor_loop(sst2, monkeypatch):
    """Same losses and trained tensors as torch's single-tensor AdamW with gradients set to
    None each step (the trainer before): losses within 1e-6 relative, tensors within 1e-6
    absolute, fp rounding of a reordered sum. (1e-7 held on an AVX-512 machine; an AVX2 one
    rounds 8 of 32,768 values by 2e-7 after 5 steps. A wrong update, e.g. no bias correction,
    moves them by about the learning rate, 1e-2.)"""
    adapter, form, cfg = _tiny_run(steps=5)
    reference = copy.deepcopy(adapter)
    start = {n: t.clone() for n, t in adapter.trainable_state_dict().items()}
    stats = train(adapter, form, sst2, cfg, seed=0, device=torch.device("cpu"))
    assert stats.optimizer in ("fused", "foreach")
    assert all(p.grad is not None for p in adapter.parameters() if p.requires_grad)  # kept allocated

    def single(params, cfg):
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False), "single-tensor"

    monkeypatch.setattr(trainer, "make_optimizer", single)
    ref = train(reference, form, sst2, cfg, seed=0, device=torch.device("cpu"))
    assert ref.optimizer == "single-tensor"
    assert stats.losses == pytest.approx(ref.losses, rel=1e-6, abs=0)
    ours, theirs = adapter.trainable_state_dict(), reference.trainable_state_dict()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(ours[n], start[n]) for n in start)  # it did train


class _Broken(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, **kwargs):
        raise RuntimeError("no C++ compiler found\nsecond line")


def test_a_failing_compile_falls_back_to_eager_and_says_why(sst2, monkeypatch, capsys):
    adapter, form, cfg = _tiny_run(steps=3, compile=True)
    eager_adapter = copy.deepcopy(adapter)
    monkeypatch.setattr(torch, "compile", lambda module, **kw: _Broken(module))
    stats = train(adapter, form, sst2, cfg, seed=0, device=torch.device("cpu"))
    assert not stats.compiled
    assert stats.compile_note == "torch.compile failed at step 1 (RuntimeError: no C++ compiler found); ran eager"
    warning = [line for line in capsys.readouterr().err.splitlines() if "torch.compile" in line]
    assert warning == [f"warning: {stats.compile_note}"]
    eager = train(eager_adapter, form, sst2, dataclasses.replace(cfg, compile=False), seed=0,
                  device=torch.device("cpu"))
    assert stats.losses == eager.losses and not eager.compiled and eager.compile_note == ""

    def unsupported(module, **kw):
        raise RuntimeError("Dynamo is not supported on Python 3.99+")

    monkeypatch.setattr(torch, "compile", unsupported)
    stats = train(copy.deepcopy(eager_adapter), form, sst2, cfg, seed=0, device=torch.device("cpu"))
    assert stats.compile_note.startswith("torch.compile failed (RuntimeError: Dynamo is not supported")
