"""Training precision (bench/run/precision.py): the option is validated, ``auto`` resolves
before a cell's id is computed (fp32 in reproducible mode), a bf16-mixed run's loss curve
tracks fp32's, the row records what ran, and casting frozen weights once leaves the model
computing the same numbers as autocast alone."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from bench.core.config import ConfigError, TrainConfig
from bench.core.records import read_records
from bench.measure import flops
from bench.run import precision
from bench.run.backbones import load_backbone
from bench.run.driver import pinned_cells
from bench.run.matrix import expand
from methods import METHODS, Anatomy, AttachContext

CPU = torch.device("cpu")
SUITE = {"methods": ["prefix_tuning"], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
         "prefix_lengths": [2], "seeds": [0]}
# Loss curves of a bf16-mixed and an fp32 run of the same tiny cell (20 steps of 8 examples,
# batches identical): bf16 keeps 8 significand bits (relative rounding 2^-9 = 0.2%), so each
# step's loss may differ by a few 1e-3 on a loss near ln 2 = 0.69, and differences compound
# as the weights drift apart over steps. A wrong cast (bf16 master weights, a dropped
# update) moves the curve by more than 0.05 within the first steps.
CURVE_TOLERANCE = 0.02  # largest |loss_bf16 - loss_fp32| at any step
MEAN_TOLERANCE = 0.01  # mean |difference| over the curve


def test_an_invalid_precision_is_a_config_error_naming_the_valid_ones(capsys):
    with pytest.raises(ConfigError, match="precision 'fp16' is not one of auto, fp32, bf16-mixed"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match=r"\[suites.x\].*precision 'bf16' is not one of auto, fp32, bf16-mixed"):
        expand({"suites": {"x": {**SUITE, "train": {"precision": "bf16"}}}}, "x")
    with pytest.raises(ConfigError, match="key 'precision' has value 16, expected str"):
        expand({"suites": {"x": {**SUITE, "train": {"precision": 16}}}}, "x")
    from bench import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--suite", "tiny", "--precision", "fp16", "--dry-run"])
    assert exit_.value.code == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU that has avx512_bf16, with ATen at AVX512 (what ``auto`` looks at)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")


def test_auto_resolves_before_the_id_and_to_fp32_in_reproducible_mode(bf16_cpu, monkeypatch):
    (cell,) = expand({"suites": {"x": {**SUITE}}}, "x")
    assert cell.train["precision"] == "auto"
    fast = cell.pinned(2, False)
    assert fast.train["precision"] == "bf16-mixed" and fast.id != cell.pinned(2, False, auto_precision="fp32").id
    # the reproducible mode pins ATen to AVX2, which has no bf16 arithmetic
    assert cell.pinned(2, True).train["precision"] == "fp32"
    assert precision.resolve("auto", "cpu", deterministic=True) == "fp32"
    (pinned,) = pinned_cells([cell], threads=2, reproducible_mode=True)
    assert pinned.train["precision"] == "fp32" and pinned.deterministic
    (pinned,) = pinned_cells([cell], threads=2)
    assert pinned.train["precision"] == "bf16-mixed"
    # an explicit value is kept
    (fixed,) = expand({"suites": {"x": {**SUITE, "train": {"precision": "fp32"}}}}, "x")
    assert fixed.pinned(2, False).train["precision"] == "fp32"
    # without bf16 instructions, or with ATen held below AVX-512: fp32
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert precision.resolve("auto", "cpu") == "fp32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert cell.pinned(2, False).train["precision"] == "fp32"
    # CUDA: bf16 where the GPU supports it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, expected in ((True, "bf16-mixed"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert precision.resolve("auto", "cuda", deterministic=True) == expected


def _attach(method: str, backbone: str, head: str):
    loaded = load_backbone(backbone, head)
    model = copy.deepcopy(loaded.model)
    cls = METHODS.get(method)
    torch.manual_seed(0)
    adapter = cls(cls.Config(), 3 if cls.uses_prefix_length else None).attach(
        model, AttachContext(loaded.tokenizer, Anatomy.of(model), 0))
    with torch.no_grad():  # off the zero initialisation (LoRA's B), so the method acts
        g = torch.Generator().manual_seed(1)
        for p in adapter.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return adapter


BATCH = {"input_ids": torch.tensor([[0, 0, 2023, 3185, 2001, 2204], [2023, 2003, 1037, 2307, 2143, 1012]]),
         "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])}


@pytest.mark.parametrize(("method", "backbone", "head"), [
    ("prefix_tuning", "tiny-llama", "causal_lm"), ("lora", "tiny-llama", "causal_lm"),
    ("prefix_tuning", "tiny-gpt2", "causal_lm"), ("lora", "tiny-bert", "seq_cls")])
def test_frozen_weights_cast_once_compute_what_autocast_computes(method, backbone, head):
    """bf16-mixed casts frozen matmul weights once instead of autocast casting them every
    step: logits, losses and gradients over three AdamW steps are the same bits."""
    plain = _attach(method, backbone, head)
    cast = copy.deepcopy(plain)
    mixed = precision.Precision("bf16-mixed", CPU)
    assert mixed.prepare(cast) > 0 and mixed.prepare(cast) == 0  # once; a second call finds nothing
    emb = cast.model.get_input_embeddings().weight
    assert emb.dtype == torch.float32  # lookups (and an output layer tied to them) stay fp32
    trainable = [n for n, p in cast.named_parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in cast.parameters() if p.requires_grad)
    assert any(p.dtype == torch.bfloat16 for p in cast.parameters())
    losses = {}
    for name, adapter in (("plain", plain), ("cast", cast)):
        params = [p for p in adapter.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2)
        adapter.train()
        losses[name] = []
        for step in range(3):
            opt.zero_grad()
            torch.manual_seed(step)  # GPT-2 and BERT draw dropout masks: the same ones for both
            with mixed.autocast():
                logits = adapter(**BATCH).logits
            loss = logits.float().square().mean()
            loss.backward()
            opt.step()
            losses[name].append((loss.item(), logits.detach(), [p.grad.clone() for p in params]))
    for (la, ya, ga), (lb, yb, gb) in zip(losses["plain"], losses["cast"], strict=True):
        assert la == lb and torch.equal(ya, yb) and all(map(torch.equal, ga, gb))


def test_bf16_loss_curve_tracks_fp32_and_the_row_records_precision(tmp_path, data, capsys):
    """The suite says fp32; ``--precision bf16-mixed`` overrides it. Same batches, same seed:
    eight training examples, so every step sees them all and the loss falls smoothly (a
    random tiny model learns nothing general from SST-2 in 20 steps; it can memorise)."""
    from bench import cli

    toml = tmp_path / "s.toml"
    toml.write_text('[suites.x]\nmethods=["prefix_tuning"]\ntasks=["glue/sst2"]\nbackbones=["tiny-llama"]\n'
                    'prefix_lengths=[2]\nseeds=[0]\n'
                    'train={train_steps=20, batch_size=8, eval_limit=16, train_limit=8, max_length=32, '
                    'lr=0.01, precision="fp32"}\n')
    args = ["run", "--config", str(toml), "--suite", "x", "--results", str(tmp_path / "r"), "--no-render",
            "--data-dir", str(data.data_dir)]
    assert cli.main(args) == 0
    assert cli.main([*args, "--precision", "bf16-mixed"]) == 0
    rows = {r.precision: r for r in read_records(tmp_path / "r")[0]}
    assert rows.keys() == {"fp32", "bf16-mixed"}
    for name, row in rows.items():
        assert row.status == "ok", row.error
        assert row.config["train"]["precision"] == name  # in the id: two cells, two rows
        dtype = torch.bfloat16 if name == "bf16-mixed" else torch.float32
        assert row.peak_flops == flops.peak_flops(CPU, dtype)  # MFU against the peak of the precision used
    assert rows["fp32"].cell_id != rows["bf16-mixed"].cell_id
    fp32, bf16 = (json.loads(open(rows[n].curve_path).read())["loss"] for n in ("fp32", "bf16-mixed"))
    assert len(fp32) == len(bf16) == 20 and fp32[-1] < fp32[0] - 0.15  # it learns, so the curve says something
    diffs = [abs(a - b) for a, b in zip(fp32, bf16, strict=True)]
    assert max(diffs) <= CURVE_TOLERANCE and sum(diffs) / len(diffs) <= MEAN_TOLERANCE, diffs
    assert 0 < max(diffs)  # it did run in bf16


def test_evaluation_runs_in_fp32_on_the_weights_bf16_training_used(monkeypatch):
    """A bf16 forward's rounding depends on the batch's shape, so evaluation is fp32 for every
    cell: on a bf16-mixed cell's cast weights brought back to fp32 (the same values), with
    no autocast, and cast back to bf16 afterwards for training to go on."""
    from bench.run import trainer

    plain = _attach("prefix_tuning", "tiny-llama", "causal_lm")
    cast = copy.deepcopy(plain)
    assert precision.Precision("bf16-mixed", CPU).prepare(cast) > 0
    bf16_before = {n for n, p in cast.named_parameters() if p.dtype == torch.bfloat16}
    rounded = copy.deepcopy(plain)  # fp32 weights holding exactly the values the cast gave
    with torch.no_grad():
        for n, p in rounded.named_parameters():
            if n in bf16_before:
                p.copy_(p.to(torch.bfloat16).float())
    cast.eval()
    rounded.eval()
    with torch.no_grad(), precision.fp32_evaluation(cast):
        assert all(p.dtype == torch.float32 for p in cast.parameters())
        got = cast(**BATCH).logits
    assert torch.equal(got, rounded(**BATCH).logits)
    assert {n for n, p in cast.named_parameters() if p.dtype == torch.bfloat16} == bf16_before

    seen = []

    class Probe:
        def encode_eval(self, examples):
            return dict(BATCH)

        def count_tokens(self, batch):
            return int(batch["attention_mask"].sum())

        def predict(self, model, batch):
            seen.append((torch.is_autocast_enabled("cpu"),
                         {p.dtype for p in model.parameters() if not p.requires_grad}))
            return [0]

    trainer.evaluate(cast, Probe(), [object()], 1, CPU)
    assert seen == [(False, {torch.float32})]
    assert {n for n, p in cast.named_parameters() if p.dtype == torch.bfloat16} == bf16_before
