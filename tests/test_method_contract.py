"""Every registered method against every tiny backbone: forward, backward (only the
method's tensors train, the backbone stays bit-identical), closed-form trainable counts,
safetensors round trip, generate, and zero-initialised methods reproducing the base.
A new method registered in ``methods`` is covered here without new test code."""

from __future__ import annotations

import copy
import typing

import pytest
import torch

from bench.run.artefacts import save_adapter
from bench.run.backbones import load_backbone
from methods import METHODS, Adapter, Anatomy, AttachContext, Method, MethodConfig
from methods.base import load_adapter, with_positions
from methods.lora import LoraConfig

BACKBONES = [("tiny-gpt2", "causal_lm"), ("tiny-llama", "causal_lm"), ("tiny-bert", "seq_cls")]
P = 3
IDS = torch.tensor([[0, 0, 2023, 3185, 2001, 2204], [2023, 2003, 1037, 2307, 2143, 1012]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def inputs(head: str) -> dict[str, torch.Tensor]:
    # causal backbones pad on the left, encoders on the right (as bench.run.backbones sets up)
    mask = MASK if head == "causal_lm" else MASK.flip(1)
    ids = IDS if head == "causal_lm" else torch.where(mask.bool(), IDS.flip(1), 0)
    return {"input_ids": ids, "attention_mask": mask}


def attach(name: str, backbone: str, head: str, seed: int = 0):
    loaded = load_backbone(backbone, head)
    model = copy.deepcopy(loaded.model)  # the loaded model is shared
    cls = METHODS.get(name)
    method = cls(cls.Config(), P if cls.uses_prefix_length else None)
    torch.manual_seed(seed)
    adapter = method.attach(model, AttachContext(loaded.tokenizer, Anatomy.of(model), seed))
    return method, model, adapter, loaded


def real(logits: torch.Tensor, head: str) -> torch.Tensor:
    """Logits at non-padding positions (padding rows may differ harmlessly)."""
    return logits[inputs(head)["attention_mask"].bool()] if head == "causal_lm" else logits


def train_steps(adapter, head: str, steps: int = 3) -> None:
    params = [p for p in adapter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    adapter.train()
    for _ in range(steps):
        loss = adapter(**inputs(head)).logits.float().square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    adapter.eval()


CASES = [(m, b, h) for m in METHODS.names() for b, h in BACKBONES]


@pytest.mark.parametrize("name,backbone,head", CASES)
def test_forward_backward_only_method_params_train(name: str, backbone: str, head: str) -> None:
    loaded = load_backbone(backbone, head)
    model = copy.deepcopy(loaded.model)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    cls = METHODS.get(name)
    method = cls(cls.Config(), P if cls.uses_prefix_length else None)
    adapter = method.attach(model, AttachContext(loaded.tokenizer, Anatomy.of(model), 0))

    trainable = [p for p in adapter.parameters() if p.requires_grad]
    assert trainable, f"{name} trains nothing"
    assert sum(p.numel() for p in trainable) == method.trainable_count(adapter, Anatomy.of(model))

    out = adapter(**inputs(head)).logits
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    for n, p in adapter.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{n} got no gradient"
        else:
            assert p.grad is None, f"frozen {n} got a gradient"
    assert any(p.grad.abs().sum() > 0 for p in trainable)

    train_steps(adapter, head)
    frozen = [p for p in adapter.parameters() if not p.requires_grad and id(p) in before]
    assert frozen or name == "full_finetune"
    for p in frozen:
        assert torch.equal(p, before[id(p)]), "a frozen backbone weight changed"
    log = adapter.step_log()
    assert all(isinstance(v, list) and all(isinstance(x, float) for x in v) for v in log.values())


@pytest.mark.parametrize("name,backbone,head", CASES)
def test_save_load_round_trip(name: str, backbone: str, head: str, tmp_path) -> None:
    _, _, trained, _ = attach(name, backbone, head, seed=0)
    train_steps(trained, head, steps=2)
    path, size = save_adapter(trained, tmp_path / "a.safetensors")
    assert size > 0
    _, _, fresh, _ = attach(name, backbone, head, seed=1)  # different init: loading must matter
    load_adapter(fresh, path)
    trained.eval(), fresh.eval()
    trained.fold(), fresh.fold()
    with torch.no_grad():
        a, b = trained(**inputs(head)).logits, fresh(**inputs(head)).logits
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    with pytest.raises(KeyError, match="unexpected"):
        fresh.load_trainable_state_dict({**trained.trainable_state_dict(), "bogus": torch.zeros(1)})


@pytest.mark.parametrize("name", [m for m in METHODS.names() if METHODS.get(m).identity_at_init])
@pytest.mark.parametrize("backbone,head", BACKBONES)
def test_zero_initialised_methods_reproduce_the_base(name: str, backbone: str, head: str) -> None:
    _, _, adapter, loaded = attach(name, backbone, head)
    adapter.eval()
    with torch.no_grad():
        # the base model with positions from the mask, as every adapter gives them
        base = loaded.model(**with_positions(loaded.model, inputs(head))).logits
        ours = adapter(**inputs(head)).logits
    assert torch.equal(real(ours, head), real(base, head))


def run_generate(adapter, x: dict, use_cache: bool, **kw):
    out = adapter.generate(**x, use_cache=use_cache, max_new_tokens=4, do_sample=False, pad_token_id=0,
                           output_logits=True, return_dict_in_generate=True, **kw)
    return out


@pytest.mark.parametrize("name,backbone,head", [c for c in CASES if c[2] == "causal_lm"])
def test_generate(name: str, backbone: str, head: str) -> None:
    _, _, adapter, loaded = attach(name, backbone, head)
    train_steps(adapter, head, steps=1)  # move off any zero init so the method matters
    adapter.eval()
    adapter.fold()
    x, n = inputs(head), IDS.shape[1]
    cached, uncached = run_generate(adapter, x, True), run_generate(adapter, x, False)
    assert torch.equal(cached.sequences[:, :n], x["input_ids"])
    assert torch.equal(cached.sequences, uncached.sequences)
    # every step's logits, both cache modes, equal a plain forward over the generated text
    # (checked on the unpadded row: generate derives positions from the mask, forward does not)
    seq = cached.sequences[1:]
    with torch.no_grad():
        ref = adapter(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[0, -5:-1]
    for out in (cached, uncached):
        torch.testing.assert_close(torch.stack(out.logits, 1)[1], ref, rtol=0, atol=1e-5)
    beams = [run_generate(adapter, x, c, num_beams=2, num_return_sequences=2, output_scores=True)
             for c in (True, False)]
    assert beams[0].sequences.shape == (4, n + 4)
    # near-tied beams may swap order between cached and uncached float paths: compare per prompt
    for i in range(2):
        rows = slice(2 * i, 2 * i + 2)
        assert sorted(beams[0].sequences[rows].tolist()) == sorted(beams[1].sequences[rows].tolist())
        torch.testing.assert_close(beams[0].sequences_scores[rows].sort().values,
                                   beams[1].sequences_scores[rows].sort().values, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,backbone,head", CASES)
def test_inference_state_alone_reproduces_the_logits(name: str, backbone: str, head: str, tmp_path) -> None:
    """What a method deploys (``inference_state_dict``, e.g. the folded prefix) loaded into a
    fresh adapter gives the trained adapter's logits, with the task head trained as the
    runner trains it."""
    from bench.run.artefacts import save_state
    from bench.run.cell import head_parameters
    from methods.base import load_inference_adapter

    def attach_like_runner(seed: int):
        _, model, adapter, _ = attach(name, backbone, head, seed=seed)
        for p in (head_parameters(model) if head == "seq_cls" else []):
            p.requires_grad_(True)
        return adapter

    trained = attach_like_runner(0)
    train_steps(trained, head, steps=2)
    trained.fold()
    path, size = save_state(trained.inference_state_dict(), tmp_path / "deployed.safetensors")
    fresh = attach_like_runner(1)  # different init: loading must matter
    load_inference_adapter(fresh, path)
    fresh.eval()
    fresh.fold()  # as the evaluator does: must keep the loaded state
    with torch.no_grad():
        a, b = trained(**inputs(head)).logits, fresh(**inputs(head)).logits
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert size <= save_adapter(trained, tmp_path / "trained.safetensors")[1] + 1024


def declared_config_type(cls: type) -> type | None:
    """The type ``self.config`` has for a type checker: a ``config`` annotation of the class
    or its nearest ancestor, or the ``X`` of its nearest ``Method[X]`` base."""
    for klass in cls.__mro__:
        if "config" in klass.__dict__.get("__annotations__", {}) and klass is not Method:
            return typing.get_type_hints(klass)["config"]
        for base in klass.__dict__.get("__orig_bases__", ()):
            if typing.get_origin(base) is Method:
                return typing.get_args(base)[0]
    return None


@pytest.mark.parametrize("name", METHODS.names())
def test_config_is_typed_as_the_method_parses_it(name: str) -> None:
    cls = METHODS.get(name)
    assert declared_config_type(cls) is cls.Config


def test_a_config_unlike_the_type_parameter_is_rejected() -> None:
    with pytest.raises(TypeError, match="is a Method\\[LoraConfig\\] but its Config MethodConfig"):
        class Wrong(Method[LoraConfig]):
            Config = MethodConfig

            def attach(self, model, ctx):
                raise NotImplementedError


def test_trainable_count_defaults_to_the_adapters_trainable_parameters() -> None:
    class Bias(Method[MethodConfig]):  # not registered: the registry stays as it is
        uses_prefix_length = False

        def attach(self, model, ctx):
            adapter = Adapter(model)
            adapter.shift = torch.nn.Parameter(torch.zeros(5))
            return adapter

    loaded = load_backbone("tiny-llama", "causal_lm")
    model = copy.deepcopy(loaded.model)
    method = Bias(MethodConfig(), None)
    adapter = method.attach(model, AttachContext(loaded.tokenizer, Anatomy.of(model), 0))
    assert method.trainable_count(adapter, Anatomy.of(model)) == 5


@pytest.mark.parametrize("name", METHODS.names())
def test_peft_export_type_is_what_the_adapter_exports(name: str) -> None:
    """``Method.peft_export_type`` (what ``prefix-bench export`` lists) and the adapter's
    ``peft_export`` agree: both absent, or a config of that PEFT type whose tensors fit it
    (tests/test_peft_export.py checks the logits)."""
    cls = METHODS.get(name)
    _, _, adapter, _ = attach(name, "tiny-llama", "causal_lm")
    exported = adapter.peft_export("CAUSAL_LM")
    if cls.peft_export_type is None:
        assert exported is None, f"{name} exports to PEFT but declares no peft_export_type"
        return
    assert exported is not None, f"{name} declares peft_export_type {cls.peft_export_type} but exports nothing"
    config, tensors = exported
    def plain(x):  # PEFT's enums are str subclasses; their value is the plain name
        return str(getattr(x, "value", x))

    assert plain(config.peft_type) == cls.peft_export_type and plain(config.task_type) == "CAUSAL_LM"
    assert tensors and all(isinstance(t, torch.Tensor) and not t.requires_grad for t in tensors.values())
