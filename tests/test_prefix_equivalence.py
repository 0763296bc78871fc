"""Our prefix tuning against independent references.

1. HF PEFT's prefix tuning, holding the same prefix tensors, gives the same logits on tiny
   LLaMA (grouped-query attention: the prefix is shaped by the key/value heads), GPT-2 and
   BERT; a prefix shaped by the query heads, or laid out wrongly, does not.
2. A prefix made of real tokens' own keys/values equals prepending those tokens to the
   input, for forward and for generate (greedy and beam search, with and without cache).
"""

from __future__ import annotations

import copy

import pytest
import torch

from bench.run.backbones import load_backbone
from methods import METHODS, Anatomy, AttachContext
from methods.base import positions_from_mask
from methods.kv_prefix import activation_kv, build_cache, kv_to_flat

P = 3
IDS = torch.tensor([[0, 0, 2023, 3185, 2001, 2204], [2023, 2003, 1037, 2307, 2143, 1012]])
LEFT = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
CASES = [("tiny-llama", "causal_lm", "CAUSAL_LM"), ("tiny-gpt2", "causal_lm", "CAUSAL_LM"),
         ("tiny-bert", "seq_cls", "SEQ_CLS")]


def batch(head: str) -> tuple[torch.Tensor, torch.Tensor]:
    if head == "causal_lm":
        return IDS, LEFT
    mask = LEFT.flip(1)  # encoders pad on the right
    return torch.where(mask.bool(), IDS.flip(1), 0), mask


def ours(backbone: str, head: str, **config):
    loaded = load_backbone(backbone, head)
    model = copy.deepcopy(loaded.model)
    cls = METHODS.get("prefix_tuning")
    adapter = cls(cls.Config(**config), P).attach(model, AttachContext(loaded.tokenizer, Anatomy.of(model), 0))
    return adapter.eval(), loaded


@pytest.mark.parametrize("backbone,head,task_type", CASES)
@pytest.mark.parametrize("projection", [False, True])
def test_matches_peft_with_the_same_prefix(backbone: str, head: str, task_type: str, projection: bool) -> None:
    """Same prefix tensors, same logits, once PEFT is given the positions we use (the
    text's own, from the mask, after the prefix). Left to itself PEFT counts left padding
    into the positions; on the unpadded row both agree anyway."""
    import peft

    adapter, loaded = ours(backbone, head, projection=projection, init="random", init_std=0.5)
    pm = peft.get_peft_model(copy.deepcopy(loaded.model), peft.PrefixTuningConfig(
        task_type=task_type, num_virtual_tokens=P, prefix_projection=False)).eval()
    weight = pm.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        flat = adapter.flat_prefix()
        assert flat.shape == weight.shape  # PEFT's layout, by key/value heads
        weight.copy_(flat)
        ids, mask = batch(head)
        a = adapter(input_ids=ids, attention_mask=mask).logits
        b = pm(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
        peft_default = pm(input_ids=ids, attention_mask=mask).logits
    rows = mask.bool() if head == "causal_lm" else slice(None)
    torch.testing.assert_close(a[rows], b[rows], rtol=0, atol=1e-5)
    full = 1 if head == "causal_lm" else 0  # the row without padding
    torch.testing.assert_close(a[full], peft_default[full], rtol=0, atol=1e-5)
    if head == "causal_lm":  # PEFT's own padding error, on the left-padded row
        assert (a[0] - peft_default[0])[mask[0].bool()].abs().max() > 1e-4
    assert (a - loaded.model(input_ids=ids, attention_mask=mask).logits).abs().max() > 1e-3  # prefix matters


def test_query_head_shaped_prefix_does_not_fit_gqa() -> None:
    import peft

    adapter, loaded = ours("tiny-llama", "causal_lm", projection=False)
    a = adapter.anatomy
    assert a.num_kv_heads < a.num_heads
    pm = peft.get_peft_model(copy.deepcopy(loaded.model), peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=P))
    query_shaped = (P, a.num_layers * 2 * a.num_heads * a.head_dim)
    assert pm.prompt_encoder["default"].embedding.weight.shape != query_shaped
    assert adapter.prefix.shape != query_shaped
    ids, mask = batch("causal_lm")
    kv = torch.randn(a.num_layers, 2, a.num_heads, P, a.head_dim)  # by query heads: must be refused
    with pytest.raises(RuntimeError):
        loaded.model(input_ids=ids, attention_mask=torch.cat([torch.ones(2, P, dtype=mask.dtype), mask], 1),
                     past_key_values=build_cache(kv, 2))


@pytest.mark.parametrize("backbone,head,task_type", CASES)
def test_wrong_layout_gives_different_logits(backbone: str, head: str, task_type: str) -> None:
    adapter, loaded = ours(backbone, head, projection=False, init="random", init_std=0.5)
    a = adapter.anatomy
    ids, mask = batch(head)
    with torch.no_grad():
        # compare last hidden states: tiny BERT's random classifier shrinks logit differences
        right = adapter(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        # read the flat prefix as (P, 2, L, ...) instead of PEFT's (P, L, 2, ...)
        wrong = adapter.prefix.view(P, 2, a.num_layers, a.num_kv_heads, a.head_dim).permute(2, 1, 3, 0, 4)
        adapter._folded = wrong.contiguous()
        broken = adapter(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    assert (right - broken).abs().max() > 1e-2


@pytest.mark.parametrize("backbone", ["tiny-llama", "tiny-gpt2"])
def test_activation_prefix_equals_prepended_tokens(backbone: str) -> None:
    adapter, loaded = ours(backbone, "causal_lm", projection=False)
    tokens = torch.tensor([101, 2023, 3185])
    with torch.no_grad():
        adapter.prefix.copy_(kv_to_flat(activation_kv(adapter.model, tokens, adapter.anatomy)))
    full_ids = torch.cat([tokens.expand(2, -1), IDS], 1)
    full_mask = torch.cat([torch.ones(2, P, dtype=LEFT.dtype), LEFT], 1)
    with torch.no_grad():
        a = adapter(input_ids=IDS[1:], attention_mask=LEFT[1:]).logits
        b = loaded.model(input_ids=full_ids[1:], attention_mask=full_mask[1:]).logits[:, P:]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for kw in (dict(use_cache=True), dict(use_cache=False), dict(num_beams=3, num_return_sequences=2),
               dict(num_beams=3, use_cache=False)):
        g = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, **kw)
        ours_out = adapter.generate(input_ids=IDS, attention_mask=LEFT, **g)
        ref = loaded.model.generate(input_ids=full_ids, attention_mask=full_mask, **g)[:, P:]
        assert torch.equal(ours_out, ref), kw


@pytest.mark.parametrize("backbone", ["tiny-llama", "tiny-gpt2"])
def test_vocab_init_equals_prompt_tuning_on_the_same_tokens(backbone: str) -> None:
    """On a causal model, deep prefixes initialised from sampled tokens' activations (the
    default init of p_tuning_v2) start exactly where prompt tuning initialised from the
    same tokens' embeddings starts: both equal prepending those tokens."""
    loaded = load_backbone(backbone, "causal_lm")
    adapters = []
    for name in ("p_tuning_v2", "prompt_tuning"):
        model = copy.deepcopy(loaded.model)
        cls = METHODS.get(name)
        adapters.append(cls(cls.Config(init="vocab"), P).attach(
            model, AttachContext(loaded.tokenizer, Anatomy.of(model), 0)).eval())
    with torch.no_grad():
        deep = adapters[0](input_ids=IDS, attention_mask=LEFT).logits
        prompt = adapters[1](input_ids=IDS, attention_mask=LEFT).logits[:, P:]
    torch.testing.assert_close(deep[LEFT.bool()], prompt[LEFT.bool()], rtol=0, atol=1e-5)
