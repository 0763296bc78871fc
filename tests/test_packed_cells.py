"""Many cells in one pass (bench/run/packed.py): each packed cell trains as it would alone.

Three cells that differ in seed, learning rate and prefix length train in one batched
forward and backward; each one's per-step losses, periodic evaluations, score and final
adapter tensors must equal the same cell run alone, on tiny LLaMA (verbalizer, rotary
positions) and on a tiny BERT with a classification head per cell (absolute positions).

Tolerances, and why they are not zero: a packed row is padded to the pack's longest
example and its keys to the pack's longest prefix, and the matmuls and attention run on
a batch of another shape. Masked slots weigh exactly 0, so the same terms are summed,
but in another order and blocking: float32 rounding, about 1e-7 relative per operation.
Losses: within 1e-5 relative (measured: <= 1e-6 after 4 steps). Adapter tensors: AdamW
divides each element's step by its own gradient scale, so a relative gradient error e
moves that element by about e x lr, and more only where a gradient is itself at rounding
level; each element is allowed 1e-3 x lr x steps, a thousandth of the most the optimiser
can move it (measured: <= 5e-5 of it). Under bf16-mixed the same holds with bf16's
rounding (about 4e-3 relative): losses within 1e-2 relative, adapters by their mean element
error (TOLERANCES).
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from bench.core.config import ConfigError
from bench.core.records import read_records
from bench.run import backbones, packed
from bench.run.cell import run_cell
from bench.run.driver import run_cells
from bench.run.executors import make_executor
from bench.run.matrix import expand
from methods import METHODS, Anatomy, AttachContext

STEPS = 4
TRAIN = {"train_steps": STEPS, "batch_size": 4, "eval_limit": 16, "train_limit": 64, "max_length": 32,
         "log_every": 1, "eval_every": 2, "warmup_ratio": 0.25, "precision": "fp32"}
# (seed, prefix length, lr): every free axis differs between the three cells
POINTS = [(0, 2, 1e-2), (1, 5, 3e-3), (2, 3, 2e-2)]
# fp32: equal up to summation order. bf16-mixed: a packed row is padded to the pack's longest
# example and prefix, so its bf16 matmuls round different partial sums (measured: 7e-4
# relative on the loss after 4 steps of tiny-llama)
# relative and AdamW divides each element's step by its own gradient scale, so an element
# whose gradient is at bf16 rounding level can move by a whole lr either way: there the
# adapter is compared by its mean element error, not its largest
TOLERANCES = {"fp32": (1e-5, 1e-3, "max"), "bf16-mixed": (1e-2, 0.1, "mean")}  # (loss rtol, share of lr x steps, over)


def suite_cells(method: str, backbone: str, seeds=(0, 1, 2), lengths=(2, 3, 5), train=None, **extra) -> list:
    suite = {"methods": [method] if isinstance(method, str) else list(method), "tasks": ["glue/sst2"],
             "backbones": [backbone], "prefix_lengths": list(lengths), "seeds": list(seeds),
             "train": dict(train or TRAIN), **extra}
    return expand({"suites": {"t": suite}}, "t")


def three_cells(method: str, backbone: str) -> list:
    cells = suite_cells(method, backbone)
    out = []
    for seed, length, lr in POINTS:
        cell = next(c for c in cells if c.seed == seed and c.prefix_length in (length, None))
        out.append(dataclasses.replace(cell, train={**cell.train, "lr": lr}))
    return out


@pytest.fixture
def no_dropout():
    """tiny-bert without dropout (a training forward that draws no random numbers, like
    SmolLM2's), restored afterwards: the loaded model is shared by the whole session."""
    model = backbones.load_backbone("tiny-bert", "seq_cls", 2, "auto", "cpu").model
    saved = [(m, m.p) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    config = {k: getattr(model.config, k) for k in ("hidden_dropout_prob", "attention_probs_dropout_prob")}
    for m, _ in saved:
        m.p = 0.0
    for k in config:
        setattr(model.config, k, 0.0)
    yield
    for m, p in saved:
        m.p = p
    for k, v in config.items():
        setattr(model.config, k, v)


@pytest.mark.parametrize("method,backbone,precision", [("prefix_tuning", "tiny-llama", "fp32"),
                                                       ("prefix_tuning", "tiny-bert", "fp32"),
                                                       ("prefix_tuning", "tiny-llama", "bf16-mixed")])
def test_packed_cells_equal_alone(method, backbone, precision, data, tmp_path, request):
    if backbone == "tiny-bert":
        request.getfixturevalue("no_dropout")
    cells = [dataclasses.replace(c, train={**c.train, "precision": precision}) for c in three_cells(method, backbone)]
    loss_rtol, state_share, over = TOLERANCES[precision]
    assert len({packed.pack_key(c) for c in cells}) == 1 and len({c.id for c in cells}) == 3
    cpu = torch.device("cpu")
    alone = {c.id: run_cell(c, data, cpu, tmp_path / "alone") for c in cells}
    logs: list[str] = []
    together = packed.train_together(cells, data, cpu, tmp_path / "packed", logs.append)
    assert sorted(together) == sorted(alone), logs
    for cell in cells:
        a, p = alone[cell.id], together[cell.id]
        assert p.status == "ok", p.error
        assert a.packed_with is None and p.packed_with == 3
        curve_a, curve_p = json.loads(open(a.curve_path).read()), json.loads(open(p.curve_path).read())
        assert len(curve_p["loss"]) == STEPS
        assert curve_p["loss"] == pytest.approx(curve_a["loss"], rel=loss_rtol, abs=1e-7)
        assert [s for s, _ in curve_p["evals"]] == [s for s, _ in curve_a["evals"]] == [2]
        assert [v for _, v in curve_p["evals"]] == pytest.approx([v for _, v in curve_a["evals"]], abs=loss_rtol)
        assert p.main_score == pytest.approx(a.main_score, abs=loss_rtol)
        state_a, state_p = load_file(a.adapter_path), load_file(p.adapter_path)
        assert sorted(state_a) == sorted(state_p)
        if backbone == "tiny-bert":  # each cell trained its own head
            assert any(k.startswith("model.classifier") for k in state_p)
        lr = cell.train["lr"]
        for name, t in state_a.items():
            assert state_p[name].shape == t.shape
            diff = (state_p[name] - t).abs()
            err = (diff.max() if over == "max" else diff.mean()).item()
            assert err <= state_share * lr * STEPS, f"{cell.seed} {name}: {err:.3g}"
        # the same row, field for field in form: what alone leaves empty, packed does too
        for f in dataclasses.fields(a):
            if f.name not in ("packed_with",):
                assert (getattr(a, f.name) in (None, "", 0)) == (getattr(p, f.name) in (None, "", 0)), f.name
        assert p.train_steps == a.train_steps and p.train_tokens == a.train_tokens
    # the pack's seconds are shared by real tokens: every row shows the pack's tokens/s
    rates = {round(r.train_tokens_per_s, 3) for r in together.values()}
    assert len(rates) == 1


def padded(rows: list[list[int]], left: bool) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    pads = [[0] * (width - len(r)) for r in rows]
    return {"input_ids": torch.tensor([p + r if left else r + p for p, r in zip(pads, rows, strict=True)]),
            "attention_mask": torch.tensor([[0] * len(p) + [1] * len(r) if left else [1] * len(r) + [0] * len(p)
                                            for p, r in zip(pads, rows, strict=True)])}


TEXTS = [[2023, 3185, 2001, 2204, 1012, 2307, 2143], [2023, 2003], [1037, 2307, 2143, 1012], [2003, 1037], [2307] * 5]
PACKABLE = [m for m in METHODS.names() if METHODS.get(m).packable]


@pytest.mark.parametrize("method", PACKABLE)
@pytest.mark.parametrize("backbone,head", [("tiny-llama", "causal_lm"), ("tiny-bert", "seq_cls")])
def test_packed_forward_gives_each_row_its_adapters_output(method, backbone, head):
    """Every packable method: one packed forward of three adapters (prefix lengths 2, 5, 3)
    gives each row the output its own adapter gives it alone."""
    loaded = backbones.load_backbone(backbone, head)
    cls = METHODS.get(method)
    adapters = []
    for seed, length, _ in POINTS:
        model = copy.deepcopy(loaded.model)
        adapter = cls(cls.Config(), length if cls.uses_prefix_length else None).attach(
            model, AttachContext(loaded.tokenizer, Anatomy.of(model), seed))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # off the initialisation: zero-initialised parts must matter too
            for p in adapter.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g) * 0.05 * (p.float().std().nan_to_num() + 0.1))
        adapters.append(adapter.eval())
    groups, left = [TEXTS[:2], TEXTS[2:3], TEXTS[3:]], head == "causal_lm"
    with torch.no_grad():
        together = type(adapters[0]).packed_forward(adapters, [len(g) for g in groups],
                                                    **padded(sum(groups, []), left)).logits
        row = 0
        for adapter, group in zip(adapters, groups, strict=True):
            alone = adapter(**padded(group, left)).logits
            for i, text in enumerate(group):
                got, want = (together[row + i, -len(text):], alone[i, -len(text):]) if left else \
                    (together[row + i], alone[i])
                assert (got - want).abs().max().item() <= 1e-5
            row += len(group)


def test_packs_group_cells_that_differ_only_in_seed_lr_and_prefix_length():
    cells = suite_cells(("prefix_tuning", "lora", "p_tuning_v2"), "tiny-llama", seeds=(0, 1), lengths=(2, 3))
    pt = [c for c in cells if c.method == "prefix_tuning"]
    assert len({packed.pack_key(c) for c in pt}) == 1
    assert packed.pack_key(dataclasses.replace(pt[0], train={**pt[0].train, "lr": 0.5})) == packed.pack_key(pt[0])
    other_batch = dataclasses.replace(pt[0], train={**pt[0].train, "batch_size": 8})
    assert packed.pack_key(other_batch) != packed.pack_key(pt[0])
    assert packed.pack_key(next(c for c in cells if c.method == "lora")) is None
    ordered = packed.ordered(cells[::-1])
    groups = list(packed.packs(ordered, 3))
    assert sorted(len(g) for g in groups) == [1, 1, 1, 1, 3, 3]  # lora 2 x alone; 4 + 4 in packs of <= 3
    for group in groups:
        assert len({packed.pack_key(c) for c in group}) == 1
    assert all(len(g) == 1 for g in packed.packs(ordered, 1))
    with pytest.raises(ConfigError, match="pack must be > 0"):
        make_executor("local", {"pack": 0})
    with pytest.raises(ConfigError, match="unknown key"):
        make_executor("ray", {"pack": 2})


def test_local_executor_packs_what_can_pack_and_runs_the_rest_alone(data, tmp_path):
    """pack=3: three prefix-tuning cells share a pass; LoRA (it changes the backbone's
    computation, it has no per-row state) and cells on a backbone with dropout run alone."""
    train = {**TRAIN, "train_steps": 2, "eval_every": 0}
    cells = suite_cells(("prefix_tuning", "lora"), "tiny-llama", seeds=(0, 1, 2), lengths=(2,), train=train)
    cells += suite_cells("prefix_tuning", "tiny-gpt2", seeds=(0, 1), lengths=(2,), train=train)  # dropout 0.1
    logs: list[str] = []
    counts = run_cells(cells, tmp_path, data, "cpu", log=logs.append, executor=make_executor("local", {"pack": 3}))
    assert counts["ran"] == 8 and counts["failed"] == 0, logs
    rows, problems = read_records(tmp_path)
    assert not problems
    by = {(r.backbone, r.method, r.seed): r for r in rows}
    assert [by["tiny-llama", "prefix_tuning", s].packed_with for s in (0, 1, 2)] == [3, 3, 3]
    assert [by["tiny-llama", "lora", s].packed_with for s in (0, 1, 2)] == [None, None, None]
    assert [by["tiny-gpt2", "prefix_tuning", s].packed_with for s in (0, 1)] == [None, None]
    assert any("dropout" in line and "each runs alone" in line for line in logs)
    assert all(r.status == "ok" and r.train_steps == 2 for r in rows)


def test_a_cell_whose_loss_diverges_fails_alone_and_its_pack_goes_on(data, tmp_path):
    good, bad = three_cells("p_tuning_v2", "tiny-llama")[:2]
    bad = dataclasses.replace(bad, train={**bad.train, "lr": 1e38, "eval_every": 0})
    good = dataclasses.replace(good, train={**good.train, "eval_every": 0})
    assert packed.pack_key(good) == packed.pack_key(bad)
    rows = packed.train_together([good, bad], data, torch.device("cpu"), tmp_path)
    assert rows[bad.id].status == "failed" and "non-finite training loss" in rows[bad.id].error
    assert rows[good.id].status == "ok" and rows[good.id].train_steps == STEPS
    alone = run_cell(good, data, torch.device("cpu"), tmp_path / "alone")
    assert json.loads(open(rows[good.id].curve_path).read())["loss"] == pytest.approx(
        json.loads(open(alone.curve_path).read())["loss"], rel=TOLERANCES["fp32"][0], abs=1e-7)


def test_early_stopped_cells_pack_and_each_stops_where_it_would_alone(data, tmp_path):
    """patience > 0: each packed cell scores its own held-out slice at the steps it would
    alone, stops at the same step, goes back to the same best parameters and gets the same
    row; a cell that stops leaves the pack and the others go on."""
    train = {**TRAIN, "train_steps": 8, "eval_every": 1, "patience": 2, "holdout": 0.25}
    cells = [dataclasses.replace(c, train={**c.train, **train}) for c in three_cells("prefix_tuning", "tiny-llama")]
    assert len({packed.pack_key(c) for c in cells}) == 1
    cpu = torch.device("cpu")
    alone = {c.id: run_cell(c, data, cpu, tmp_path / "alone") for c in cells}
    logs: list[str] = []
    together = packed.train_together(cells, data, cpu, tmp_path / "packed", logs.append)
    assert sorted(together) == sorted(alone), logs
    stopped = set()
    for cell in cells:
        a, p = alone[cell.id], together[cell.id]
        assert a.status == p.status == "ok", (a.error, p.error)
        assert p.packed_with == 3
        assert (p.best_step, p.stopped_step, p.plateaued, p.train_steps) == (
            a.best_step, a.stopped_step, a.plateaued, a.train_steps)
        stopped.add(a.stopped_step)
        curve_a, curve_p = json.loads(open(a.curve_path).read()), json.loads(open(p.curve_path).read())
        assert curve_p["loss"] == pytest.approx(curve_a["loss"], rel=TOLERANCES["fp32"][0], abs=1e-7)
        assert [s for s, _ in curve_p["evals"]] == [s for s, _ in curve_a["evals"]]
        assert p.holdout_score == pytest.approx(a.holdout_score, abs=1e-6)
        assert p.main_score == pytest.approx(a.main_score, abs=1e-6)
        state_a, state_p = load_file(a.adapter_path), load_file(p.adapter_path)
        for name, t in state_a.items():
            err = (state_p[name] - t).abs().max().item()
            assert err <= TOLERANCES["fp32"][1] * cell.train["lr"] * train["train_steps"], name
    # both exits are exercised: a cell leaves the pack while others go on (measured: two
    # stop at step 3, the third at 6)
    assert len(stopped) > 1 and min(stopped) < train["train_steps"], stopped
