"""``prefix-bench export --format peft``: every method with a PEFT equivalent, written by
PEFT's ``save_pretrained`` and read back by ``PeftModel.from_pretrained`` on a fresh copy of
the backbone, gives our adapter's logits (≤ 1e-5) on tiny LLaMA (causal LM) and tiny BERT
(with the trained classification head): on unpadded rows for every method, on padded rows
too for LoRA (PEFT's prefix and prompt tuning count left padding into positions, README
"Trustworthy cells: padding"). Then the whole path through the CLI on a real tiny run.
Methods with no PEFT equivalent are refused, naming the ones that export."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from bench.run.backbones import load_backbone
from bench.run.cell import head_parameters
from bench.run.export import TASK_TYPES, save_peft
from methods import METHODS, Anatomy, AttachContext
from tasks import TASKS

EXPORTABLE = ["lora", "p_tuning_v2", "prefix_tuning", "prompt_tuning"]
BACKBONES = [("tiny-llama", "causal_lm"), ("tiny-bert", "seq_cls")]
P = 3
ATOL = 1e-5
FULL = torch.tensor([[2023, 3185, 2001, 2204, 2307, 1012], [2023, 2003, 1037, 2307, 2143, 1012]])
LEFT = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def unpadded() -> dict[str, torch.Tensor]:
    return {"input_ids": FULL, "attention_mask": torch.ones_like(FULL)}


def padded(head: str) -> dict[str, torch.Tensor]:
    """Left-padded rows for the causal LM, right-padded for the encoder (as bench pads them)."""
    mask = LEFT if head == "causal_lm" else LEFT.flip(1)
    ids = torch.where(mask.bool(), FULL if head == "causal_lm" else FULL.flip(1), 0)
    return {"input_ids": ids, "attention_mask": mask}


def trained(name: str, backbone: str, head: str, **config):
    """An adapter as a cell leaves it: the method's tensors (and a seq-cls head) moved off
    their init, by a random draw large enough to move the logits."""
    loaded = load_backbone(backbone, head)
    model = copy.deepcopy(loaded.model)
    cls = METHODS.get(name)
    method = cls(cls.Config(**config), P if cls.uses_prefix_length else None)
    adapter = method.attach(model, AttachContext(loaded.tokenizer, Anatomy.of(model), 0))
    for p in head_parameters(model) if head == "seq_cls" else []:
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in adapter.named_parameters():
            if p.requires_grad:  # the head gets unit-scale weights: tiny BERT's 0.02 ones flatten the logits
                p.add_(torch.randn(p.shape, generator=g) * (1.0 if n.startswith("model.classifier") else 0.3))
    return adapter.eval(), loaded


def test_exportable_methods_are_the_ones_peft_has():
    from bench.run.export import exportable_methods

    assert exportable_methods() == EXPORTABLE
    assert {METHODS.get(m).peft_export_type for m in EXPORTABLE} == {"LORA", "PREFIX_TUNING", "PROMPT_TUNING"}


@pytest.mark.parametrize("backbone,head", BACKBONES)
@pytest.mark.parametrize("name", EXPORTABLE)
def test_peft_loads_the_export_with_our_logits(name, backbone, head, tmp_path):
    import peft

    adapter, loaded = trained(name, backbone, head)
    done = save_peft(adapter, copy.deepcopy(loaded.model), TASK_TYPES[head], loaded.tokenizer, tmp_path, name)
    assert done.max_abs_diff <= 1e-4
    assert done.head_modules == (("classifier",) if head == "seq_cls" else ())
    fresh = copy.deepcopy(loaded.model)  # its classifier is the load's random one, not the trained head
    pm = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    batches = [unpadded()] + ([padded(head)] if name == "lora" else [])
    with torch.no_grad():
        for batch in batches:
            ours = adapter(**batch).logits
            theirs = pm(**batch).logits
            # (prompt tuning's logits include its P positions; padding positions may differ harmlessly)
            padding = not bool(batch["attention_mask"].all())
            rows = batch["attention_mask"].bool() if padding and head == "causal_lm" else slice(None)
            torch.testing.assert_close(theirs[rows], ours[rows], rtol=0, atol=ATOL)
        # not vacuous: the adapter (and the head) move the logits well past the tolerance
        base = loaded.model(**unpadded()).logits
        moved = adapter(**unpadded()).logits[:, -base.shape[1]:] if head == "causal_lm" else adapter(**unpadded()).logits
        assert (moved - base).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["prefix_tuning", "prompt_tuning"])
def test_right_padded_encoder_rows_match_too(name, tmp_path):
    """Only left padding trips PEFT's prefix methods: on tiny BERT, padded on the right,
    every row of the exported prefix and prompt gives our logits."""
    import peft

    adapter, loaded = trained(name, "tiny-bert", "seq_cls")
    save_peft(adapter, copy.deepcopy(loaded.model), "SEQ_CLS", loaded.tokenizer, tmp_path, name)
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(loaded.model), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(**padded("seq_cls")).logits, adapter(**padded("seq_cls")).logits,
                                   rtol=0, atol=ATOL)


def test_projected_prefix_exports_folded_without_its_mlp(tmp_path):
    """prefix_tuning's default trains through Li & Liang's MLP; PEFT gets the folded prefix."""
    from safetensors.torch import load_file

    adapter, loaded = trained("prefix_tuning", "tiny-llama", "causal_lm")
    assert adapter.config.projection
    save_peft(adapter, copy.deepcopy(loaded.model), "CAUSAL_LM", loaded.tokenizer, tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert list(saved) == ["prompt_embeddings"]
    with torch.no_grad():
        torch.testing.assert_close(saved["prompt_embeddings"], adapter.flat_prefix(), rtol=0, atol=0)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["prefix_projection"] is False


@pytest.mark.parametrize("name", ["residual_prefix", "prefix_tuning_plus", "full_finetune"])
def test_methods_without_a_peft_form_are_refused(name, tmp_path):
    from bench.core.config import ConfigError

    assert METHODS.get(name).peft_export_type is None
    adapter, loaded = trained(name, "tiny-llama", "causal_lm")
    assert adapter.peft_export("CAUSAL_LM") is None
    with pytest.raises(ConfigError, match=f"method '{name}'.*exportable methods: {', '.join(EXPORTABLE)}"):
        save_peft(adapter, copy.deepcopy(loaded.model), "CAUSAL_LM", loaded.tokenizer, tmp_path, name)
    assert not any(tmp_path.iterdir())


def test_a_prefix_that_keeps_the_backbone_positions_is_refused(tmp_path):
    from bench.core.config import ConfigError

    adapter, loaded = trained("prefix_tuning", "tiny-llama", "causal_lm", shift_positions=False)
    with pytest.raises(ConfigError, match="shift_positions"):
        save_peft(adapter, copy.deepcopy(loaded.model), "CAUSAL_LM", loaded.tokenizer, tmp_path)


SUITE = """
[suites.export]
methods = ["prefix_tuning", "prompt_tuning", "lora", "p_tuning_v2", "prefix_tuning_plus"]
tasks = ["glue/sst2"]
backbones = ["tiny-llama", "tiny-bert"]
prefix_lengths = [2]
seeds = [0]
train = { train_steps = 2, batch_size = 4, eval_batch_size = 8, eval_limit = 8, train_limit = 16, max_length = 32 }
exclude = [
    { method = "prompt_tuning", backbone = "tiny-bert" },
    { method = "prefix_tuning", backbone = "tiny-bert" },
    { method = "p_tuning_v2", backbone = "tiny-llama" },
    { method = "prefix_tuning_plus", backbone = "tiny-bert" },
]
"""


@pytest.mark.skipif(not os.environ.get("PREFIX_BENCH_DATA_DIR"), reason="needs offline GLUE data: set "
                    "PREFIX_BENCH_DATA_DIR")
def test_export_through_the_cli_after_a_real_tiny_run(tmp_path, capsys):
    """run a 2-step tiny suite, export each exportable cell, load it with PEFT: the logits
    of the adapter rebuilt from the cell's saved state (LLaMA: verbalizer over the whole
    vocabulary; BERT: trained classification head)."""
    import peft

    from bench.cli import main
    from bench.core.records import read_records
    from bench.run.export import METADATA, rebuild

    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    results = tmp_path / "runs"
    assert main(["run", "--config", str(suite), "--suite", "export", "--results", str(results),
                 "--no-render", "--quiet", "--device", "cpu"]) == 0
    records = {(r.method, r.backbone): r for r in read_records(results)[0]}
    assert len(records) == 6 and all(r.status == "ok" for r in records.values())
    task = TASKS.get("glue/sst2")
    for (method, backbone), record in sorted(records.items()):
        out = tmp_path / "peft" / record.cell_id
        code = main(["export", record.cell_id[:12], "--format", "peft", "--results", str(results), "--out", str(out)])
        captured = capsys.readouterr()
        if method == "prefix_tuning_plus":
            assert code == 2
            assert "method 'prefix_tuning_plus' cannot be exported" in captured.err
            assert f"exportable methods: {', '.join(EXPORTABLE)}" in captured.err
            assert not out.exists()
            continue
        assert code == 0, captured.err
        assert f"exported {record.cell_id}" in captured.out
        meta = json.loads((out / METADATA).read_text())
        assert meta["cell_id"] == record.cell_id and meta["weights"] == "random-init"
        cell = rebuild(record, results)
        assert meta["task_type"] == TASK_TYPES[cell.head]
        assert cell.head == ("causal_lm" if backbone == "tiny-llama" else "seq_cls")
        fresh = copy.deepcopy(load_backbone(backbone, cell.head, task.num_labels).model)
        pm = peft.PeftModel.from_pretrained(fresh, str(out)).eval()
        with torch.no_grad():
            ours, theirs = cell.adapter(**unpadded()).logits, pm(**unpadded()).logits
        torch.testing.assert_close(theirs, ours, rtol=0, atol=ATOL, msg=f"{method} on {backbone}")
    # unknown format and unknown cells are config errors
    lora = records[("lora", "tiny-llama")].cell_id
    assert main(["export", lora, "--format", "onnx", "--results", str(results)]) == 2
    assert "valid formats are peft" in capsys.readouterr().err
    assert main(["export", "ffffffff", "--results", str(results)]) == 2
    assert "no cell 'ffffffff'" in capsys.readouterr().err
