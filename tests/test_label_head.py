"""bench/run/label_head.py: scoring only the label words' rows of the output layer gives the
full layer's logits and gradients at those words, for every method, and puts the output
layer back afterwards."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.measure.flops import StepFlops
from bench.run import backbones
from bench.run.formulations import Verbalizer
from bench.run.label_head import label_rows, label_share
from methods import METHODS, Anatomy, AttachContext
from tasks import TASKS, Example

METHODS_UNDER_TEST = ["prefix_tuning", "prompt_tuning", "lora", "full_finetune", "residual_prefix"]


def _adapter(method: str, backbone: str = "tiny-llama", eager: bool = False):
    loaded = backbones.load_backbone(backbone, "causal_lm", 2, "auto", "cpu")
    model = copy.deepcopy(loaded.model)
    if eager:
        model.config._attn_implementation = "eager"  # matmuls FlopCounterMode can see
    cls = METHODS.get(method)
    m = cls(cls.Config.from_dict({}, method), 4 if cls.uses_prefix_length else None)
    return m.attach(model, AttachContext(loaded.tokenizer, Anatomy.of(model), 0)), loaded.tokenizer


def _batch(tokenizer):
    task = TASKS.get("glue/sst2")
    verbalizer = Verbalizer(task, tokenizer, 32)
    examples = [Example(text_a=t, label=y) for t, y in
                [("a fine film", 1), ("dull and long", 0), ("it works , mostly", 1)]]
    return verbalizer, verbalizer.encode(examples)


@pytest.mark.parametrize("backbone", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("method", METHODS_UNDER_TEST)
def test_label_rows_give_the_full_layers_logits_and_gradients(method, backbone):
    adapter, tokenizer = _adapter(method, backbone)
    verbalizer, batch = _batch(tokenizer)
    inputs = verbalizer.model_inputs(batch)
    ids = verbalizer.label_token_ids
    params = [p for p in adapter.parameters() if p.requires_grad]
    head = adapter.model.get_output_embeddings()

    full = adapter(**inputs, logits_to_keep=1).logits[:, -1, :].index_select(-1, ids)
    full_grads = torch.autograd.grad(F.cross_entropy(full, batch["labels"]), params)
    ours = verbalizer.scores(adapter, batch)
    ours_grads = torch.autograd.grad(F.cross_entropy(ours, batch["labels"]), params)

    assert ours.shape == (3, len(ids))
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert adapter.model.get_output_embeddings() is head  # put back


def test_output_layer_is_put_back_when_the_forward_raises():
    adapter, _ = _adapter("lora")
    head = adapter.model.get_output_embeddings()
    with pytest.raises(RuntimeError, match="boom"):
        with label_rows(adapter, torch.tensor([1, 2])) as swapped:
            assert swapped and adapter.model.get_output_embeddings() is not head
            raise RuntimeError("boom")
    assert adapter.model.get_output_embeddings() is head


def test_a_model_without_an_output_layer_is_left_alone():
    loaded = backbones.load_backbone("tiny-bert", "seq_cls", 2, "auto", "cpu")
    with label_rows(loaded.model, torch.tensor([0])) as swapped:
        assert swapped is False
    assert label_share(loaded.model, 2) == 1.0


@pytest.mark.parametrize("method", ["prefix_tuning", "full_finetune"])
def test_flop_count_with_label_rows_matches_flop_counter_mode(method):
    adapter, tokenizer = _adapter(method, eager=True)
    verbalizer, batch = _batch(tokenizer)
    B, S = batch["input_ids"].shape
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])  # the count takes real lengths
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(verbalizer.scores(adapter, batch), batch["labels"]).backward()
    share = verbalizer.head_share(adapter)
    assert share == pytest.approx(2 / adapter.model.config.vocab_size)
    assert StepFlops.of(adapter).count(B, S, train=True, head_share=share) == counter.get_total_flops()


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "lora"])
def test_generation_loss_keeps_the_same_positions_as_a_count(method):
    """The generation loss passes the kept positions as an index tensor (a contiguous copy);
    it must pick what ``logits_to_keep=count`` picks, also when prompt tuning puts P
    positions in front of the sequence."""
    from bench.run.formulations import Generation

    adapter, tokenizer = _adapter(method)
    task = TASKS.get("e2e_nlg")
    gen = Generation(task, tokenizer, 32)
    batch = gen.encode([Example(text_a="name[Alimentum], area[city centre]", label="Alimentum is central."),
                        Example(text_a="name[Blue Spice]", label="Blue Spice.")])
    labels = batch["labels"]
    start = max(int((labels != -100).any(0).nonzero()[0]) - 1, 0)
    out = adapter(**gen.model_inputs(batch), logits_to_keep=labels.shape[1] - start, use_cache=False)
    logits = out.logits[:, :-1]
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, start + 1:].reshape(-1),
                               ignore_index=-100)
    torch.testing.assert_close(gen.train_loss(adapter, batch), expected, rtol=1e-5, atol=1e-6)
