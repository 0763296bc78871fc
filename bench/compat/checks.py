"""The feature checks of the compatibility matrix, one function per column.

Each check receives a ``Subject`` (one method on one architecture: the shared frozen base
model and a "trained" state, the method's tensors moved off their initialisation so that
zero-initialised parts matter) and builds the adapters it needs from fresh copies of the base.
It returns a short detail on success, raises ``NotApplicable`` with the reason when the
feature does not apply, and raises anything else on failure (``CheckFailed`` for a measured
disagreement). The runner turns that into the cell's pass / fail / n/a.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from methods import METHODS, Adapter, Anatomy, AttachContext
from methods.base import load_adapter, load_inference_adapter

P = 4  # prefix length for the methods that take one
# fp32 agreement (padding, attention kernels, folding, save/load, PEFT): 1e-5 of the logits'
# largest magnitude, at least 1e-5 (a 30-layer model's logits reach ~30, and summation order
# alone moves them by ~1e-5 of that; the defects these checks catch move them by 1e-2 to 1)
TOL = 1e-5
GEN_TOL = 1e-4  # per-step generation logits and beam scores, cached vs not (longer float paths)
BF16_REL = 0.05  # bf16 logits within 5% of the fp32 ones (relative L2 error) ...
BF16_BASE_FACTOR = 3.0  # ... or within 3x the backbone's own relative bf16 error, whichever is larger
# three rows of different lengths (token ids valid in every vocabulary here)
TEXTS = [[2023, 3185, 2001, 2204, 1012, 2307, 2143], [2023, 2003], [1037, 2307, 2143, 1012]]
GEN = {"max_new_tokens": 4, "do_sample": False}


_DEPTH: ContextVar[int] = ContextVar("compat_depth", default=2)  # layers of the subject being checked


class NotApplicable(Exception):  # noqa: N818  (a verdict, not an error)
    """The feature does not apply to this method or architecture; the message says why."""


class CheckFailed(AssertionError):
    """A measured disagreement (the message holds the numbers)."""


@dataclass
class Subject:
    """One method on one architecture."""

    method: str
    architecture: str
    base: nn.Module  # frozen, eval, shared by every method of the architecture: never modified
    tokenizer: Any
    causal: bool
    _state: dict[str, torch.Tensor] | None = None

    @property
    def pad_id(self) -> int:
        pad = getattr(self.base.config, "pad_token_id", None)
        return 0 if pad is None else int(pad)

    def attach(self, model: nn.Module | None = None, seed: int = 0) -> Adapter:
        """The method attached (freshly initialised) to a copy of ``model`` (default: the base)."""
        model = copy.deepcopy(self.base if model is None else model)
        cls = METHODS.get(self.method)
        method = cls(cls.Config(), P if cls.uses_prefix_length else None)
        torch.manual_seed(seed)
        return method.attach(model, AttachContext(self.tokenizer, Anatomy.of(model), seed))

    def state(self) -> dict[str, torch.Tensor]:
        """The trained tensors every check uses: seed-0 init, each moved by 5% of its spread
        (zero-initialised ones by 1e-3: enough to matter at every check's tolerance, small
        enough that a real 30-layer model stays in its normal range)."""
        if self._state is None:
            adapter = self.attach()
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():
                self._state = {n: (t.float() + torch.randn(t.shape, generator=g) * 0.05 * (
                    t.float().std().nan_to_num() + 0.02)).to(t.dtype).clone()
                    for n, t in adapter.trainable_state_dict().items()}
        return self._state

    def adapter(self, model: nn.Module | None = None) -> Adapter:
        """Attached and holding the trained state (set directly: loading is a check of its own)."""
        adapter = self.attach(model)
        params = dict(adapter.named_parameters())
        with torch.no_grad():
            for name, value in self.state().items():
                params[name].copy_(value)
        return adapter.eval()

    def batch(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """Rows padded as the backbone pads them: causal on the left, encoders on the right."""
        width = max(len(r) for r in rows)
        ids, mask = [], []
        for r in rows:
            pad = width - len(r)
            ids.append([self.pad_id] * pad + r if self.causal else r + [self.pad_id] * pad)
            mask.append([0] * pad + [1] * len(r) if self.causal else [1] * len(r) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}

    def real(self, logits: torch.Tensor, rows: list[list[int]]) -> list[torch.Tensor]:
        """Each row's logits at its real positions (causal: the last len(row), which skips the
        left padding and any prompt placed before the text); an encoder's per-row logits."""
        if not self.causal:
            return [logits[i] for i in range(len(rows))]
        return [logits[i, -len(r):] for i, r in enumerate(rows)]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b, strict=True))


def scale(a: list[torch.Tensor]) -> float:
    return max(x.float().abs().max().item() for x in a)


def logits(adapter: nn.Module, subject: Subject, rows: list[list[int]], **kw: Any) -> list[torch.Tensor]:
    with torch.no_grad():
        return subject.real(adapter(**subject.batch(rows), **kw).logits, rows)


def agree(what: str, diff: float, magnitude: float, tol: float = TOL) -> str:
    """Pass when ``diff`` is within ``tol`` of ``magnitude`` (the compared values' largest,
    floored at 1) per two layers of depth (rounding grows with depth: a 30-layer model's logits
    move by ~2e-5 of their size between kernels or batch shapes, a 2-layer one's by ~1e-7);
    else CheckFailed with both numbers."""
    limit = tol * max(1.0, magnitude) * max(1.0, _DEPTH.get() / 2)
    if not diff <= limit:  # NaN fails
        raise CheckFailed(f"{what}: max |Δ| {diff:.2g} > {limit:.2g}")
    return f"max |Δ| {diff:.1e}"


def zero_dropout(model: nn.Module) -> None:
    """Every dropout off (real backbones train with it), so two passes compare exactly."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr in ("attention_dropout", "dropout_p"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)


# -- the checks ------------------------------------------------------------------------------

def check_train(s: Subject) -> str:
    """Forward and backward; gradients on the method's tensors only; after one SGD step only
    they changed (the backbone is bit-identical)."""
    adapter = s.adapter()
    trainable = {n: p for n, p in adapter.named_parameters() if p.requires_grad}
    if not trainable:
        raise CheckFailed("the adapter has no trainable tensor")
    frozen = {n: p.detach().clone() for n, p in adapter.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    adapter.train()
    out = s.real(adapter(**s.batch(TEXTS)).logits, TEXTS)
    if not all(torch.isfinite(o).all() for o in out):
        raise CheckFailed("non-finite logits")
    torch.stack([o.float().square().mean() for o in out]).sum().backward()
    missing = [n for n, p in trainable.items() if p.grad is None]
    if missing:
        raise CheckFailed(f"no gradient reached {missing[0]}" + (f" (+{len(missing) - 1})" if len(missing) > 1 else ""))
    leaked = [n for n, p in adapter.named_parameters() if not p.requires_grad and p.grad is not None]
    if leaked:
        raise CheckFailed(f"a frozen tensor got a gradient: {leaked[0]}")
    if not any(p.grad.abs().sum() > 0 for p in trainable.values()):
        raise CheckFailed("every gradient is zero")
    torch.optim.SGD(trainable.values(), lr=0.1).step()
    changed = [n for n, p in adapter.named_parameters() if not p.requires_grad and not torch.equal(p, frozen[n])]
    if changed:
        raise CheckFailed(f"a frozen tensor changed: {changed[0]}")
    if all(torch.equal(p, before[n]) for n, p in trainable.items()):
        raise CheckFailed("no trained tensor changed")
    return f"{sum(p.numel() for p in trainable.values())} trained"


def check_padding(s: Subject) -> str:
    """Each example alone equals itself inside a padded batch (left-padded for decoders, the
    backbone's own right padding for encoders)."""
    adapter = s.adapter()
    together = logits(adapter, s, TEXTS)
    alone = [logits(adapter, s, [row])[0] for row in TEXTS]
    return agree("alone vs padded batch", max_diff(together, alone), scale(together))


def _causal_only(s: Subject) -> None:
    if not s.causal:
        raise NotApplicable("encoder: no generation")


def _generate(adapter: Adapter, s: Subject, use_cache: bool, **kw: Any) -> Any:
    with torch.no_grad():
        return adapter.generate(**s.batch(TEXTS), use_cache=use_cache, pad_token_id=s.pad_id,
                                return_dict_in_generate=True, **GEN, **kw)


def check_greedy(s: Subject) -> str:
    """Greedy generation with the cache equals generation without it: tokens and every
    step's logits."""
    _causal_only(s)
    adapter = s.adapter()
    adapter.fold()
    cached, fresh = (_generate(adapter, s, c, output_logits=True) for c in (True, False))
    if not torch.equal(cached.sequences, fresh.sequences):
        raise CheckFailed("greedy tokens differ with and without the cache")
    diff = max_diff(list(cached.logits), list(fresh.logits))
    return agree("step logits with vs without cache", diff, scale(list(cached.logits)), GEN_TOL)


def check_beam(s: Subject) -> str:
    """Beam search (2 beams, both returned) with the cache equals beam search without it."""
    _causal_only(s)
    adapter = s.adapter()
    adapter.fold()
    cached, fresh = (_generate(adapter, s, c, num_beams=2, num_return_sequences=2, output_scores=True)
                     for c in (True, False))
    worst = 0.0
    for i in range(len(TEXTS)):  # near-tied beams may swap order between float paths
        rows = slice(2 * i, 2 * i + 2)
        if sorted(cached.sequences[rows].tolist()) != sorted(fresh.sequences[rows].tolist()):
            raise CheckFailed(f"row {i}: beams differ with and without the cache")
        worst = max(worst, (cached.sequences_scores[rows].sort().values
                            - fresh.sequences_scores[rows].sort().values).abs().max().item())
    return agree("beam scores with vs without cache", worst, cached.sequences_scores.abs().max().item(), GEN_TOL)


def _gradients(adapter: Adapter, s: Subject) -> dict[str, torch.Tensor | None]:
    adapter.train()
    out = s.real(adapter(**s.batch(TEXTS)).logits, TEXTS)
    torch.stack([o.float().square().mean() for o in out]).sum().backward()
    return {n: None if p.grad is None else p.grad.detach().clone()
            for n, p in adapter.named_parameters() if p.requires_grad}


def check_checkpointing(s: Subject) -> str:
    """Gradient checkpointing (``gradient_checkpointing_enable()``, transformers' defaults)
    gives the gradients of the plain backward."""
    plain = _gradients(s.adapter(), s)
    adapter = s.adapter()
    if not getattr(adapter.model, "supports_gradient_checkpointing", False):
        raise NotApplicable(f"{type(adapter.model).__name__} does not support gradient checkpointing")
    adapter.model.gradient_checkpointing_enable()
    ckpt = _gradients(adapter, s)
    worst, largest = 0.0, 0.0
    for name, g in plain.items():
        if (g is None) != (ckpt[name] is None):
            raise CheckFailed(f"{name}: gradient {'lost' if ckpt[name] is None else 'appeared'} under checkpointing")
        if g is not None:
            worst = max(worst, (g - ckpt[name]).abs().max().item())
            largest = max(largest, g.abs().max().item())
    return agree("gradients with vs without checkpointing", worst, largest)


def set_attention(model: nn.Module, implementation: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    else:  # older transformers
        model.config._attn_implementation = implementation


def check_attention(s: Subject) -> str:
    """The same adapter on the backbone set to SDPA and set to eager attention."""
    models = {}
    for impl in ("sdpa", "eager"):
        model = copy.deepcopy(s.base)
        try:
            set_attention(model, impl)
        except Exception as err:
            raise NotApplicable(f"transformers refuses {impl} for {type(model).__name__}: "
                                f"{first_line(err).split('. ')[0]}") from None
        models[impl] = model
    outs = {impl: logits(s.adapter(m), s, TEXTS) for impl, m in models.items()}
    return agree("SDPA vs eager", max_diff(outs["sdpa"], outs["eager"]), scale(outs["eager"]))


def rel_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all the compared values (L2: one outlier logit among 50k does not
    decide it, a shifted distribution does)."""
    num = sum((x.float() - y.float()).square().sum().item() for x, y in zip(a, b, strict=True))
    den = sum(y.float().square().sum().item() for y in b)
    return (num / max(den, 1e-30)) ** 0.5


def check_bf16(s: Subject) -> str:
    """Attached to the backbone in bfloat16 (the method's own tensors as it keeps them), the
    forward runs, is finite and stays close to fp32: relative L2 error within 5% or 3x the
    backbone's own bf16 error."""
    from methods.base import with_positions

    half = copy.deepcopy(s.base).to(torch.bfloat16)
    ref = logits(s.adapter(), s, TEXTS)
    low = logits(s.adapter(half), s, TEXTS)
    if not all(torch.isfinite(x).all() for x in low):
        raise CheckFailed("non-finite bf16 logits")
    with torch.no_grad():
        batch = s.batch(TEXTS)
        base32 = s.real(s.base(**with_positions(s.base, batch)).logits, TEXTS)
        base16 = s.real(half(**with_positions(half, batch)).logits, TEXTS)
    own = rel_error(base16, base32)
    tol = max(BF16_REL, BF16_BASE_FACTOR * own)
    err = rel_error(low, ref)
    if not err <= tol:
        raise CheckFailed(f"bf16 vs fp32: relative error {err:.2g} > {tol:.2g} (backbone's own {own:.2g})")
    return f"relative error {err:.1e} (backbone's own {own:.1e})"


def check_save_load(s: Subject) -> str:
    """The trained state through ``save_adapter``/``load_adapter``, and the deployed state
    (``inference_state_dict``) through ``save_state``/``load_inference_adapter``, each into a
    differently initialised adapter, give the trained adapter's logits."""
    from bench.run.artefacts import save_adapter, save_state

    trained = s.adapter()
    trained.fold()
    ref = logits(trained, s, TEXTS)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = save_adapter(trained, Path(tmp) / "trained.safetensors")
        fresh = s.attach(seed=1).eval()
        load_adapter(fresh, path)
        fresh.fold()
        worst = agree_max(worst, "loaded trained state", max_diff(ref, logits(fresh, s, TEXTS)), scale(ref))
        path, _ = save_state(trained.inference_state_dict(), Path(tmp) / "deployed.safetensors")
        deployed = s.attach(seed=1).eval()
        load_inference_adapter(deployed, path)
        deployed.fold()
        worst = agree_max(worst, "loaded deployed state", max_diff(ref, logits(deployed, s, TEXTS)), scale(ref))
    return f"max |Δ| {worst:.1e}"


def agree_max(worst: float, what: str, diff: float, magnitude: float) -> float:
    agree(what, diff, magnitude)
    return max(worst, diff)


def _peft_form(adapter: Adapter) -> str:
    """Which PEFT method holds this adapter's tensors: 'prefix', 'prompt' or 'lora'; else
    NotApplicable. An adapter class that changes what attention sees (overrides ``forward``
    or how the prefix is made, as residual_prefix's gates do) has no PEFT form."""
    from methods.kv_prefix import KVPrefixAdapter
    from methods.lora import PeftAdapter
    from methods.prefix_tuning import PrefixTuningAdapter
    from methods.prompt_tuning import SoftPromptAdapter

    cls = type(adapter)
    for base, form, own in ((PrefixTuningAdapter, "prefix", ("forward", "generate", "flat_prefix", "prefix_kv")),
                            (SoftPromptAdapter, "prompt", ("forward", "generate", "_extend")),
                            (PeftAdapter, "lora", ("forward",))):
        if isinstance(adapter, base):
            changed = [m for m in own if getattr(cls, m) is not getattr(base, m)]
            if changed:
                raise NotApplicable(f"{cls.__name__} overrides {changed[0]}: no PEFT equivalent")
            if form == "prefix" and isinstance(adapter, KVPrefixAdapter) and not adapter.shift_positions:
                raise NotApplicable("shift_positions=False: PEFT always shifts positions past the prefix")
            return form
    raise NotApplicable("PEFT has no such method")


def check_peft(s: Subject) -> str:
    """Our trained tensors exported into PEFT's own model of the method give our logits, and
    survive PEFT's save_pretrained/from_pretrained (on unpadded rows: PEFT counts left padding
    into positions, a known difference, see tests/test_padding_invariance.py)."""
    import peft

    adapter = s.adapter()
    form = _peft_form(adapter)
    task = "CAUSAL_LM" if s.causal else "SEQ_CLS"
    if form == "prefix":
        config = peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=P, prefix_projection=False)
    elif form == "prompt":
        config = peft.PromptTuningConfig(task_type=task, num_virtual_tokens=P)
    else:
        from methods.lora import default_targets

        c = METHODS.get(s.method).Config()
        targets = list(c.target_modules) if c.target_modules else default_targets(s.base, Anatomy.of(s.base).model_type)
        config = peft.LoraConfig(task_type=task, r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout,
                                 target_modules=targets)
    pm = peft.get_peft_model(copy.deepcopy(s.base), config).eval()
    with torch.no_grad():
        if form == "prefix":
            pm.prompt_encoder["default"].embedding.weight.copy_(adapter.flat_prefix())
        elif form == "prompt":
            pm.prompt_encoder["default"].embedding.weight.copy_(adapter.prompt)
        else:
            ours = dict(adapter.named_parameters())
            lora = {n: p for n, p in pm.named_parameters() if "lora_" in n}
            if not lora:
                raise CheckFailed("PEFT made no LoRA layer")
            for name, p in lora.items():
                p.copy_(ours["model." + name.removeprefix("base_model.model.")])
    rows = [[r] for r in TEXTS]
    ref = [logits(adapter, s, r)[0] for r in rows]
    exported = [logits(pm, s, r)[0] for r in rows]
    worst = agree_max(0.0, "PEFT model vs ours", max_diff(ref, exported), scale(ref))
    with tempfile.TemporaryDirectory() as tmp:
        pm.save_pretrained(tmp)
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(s.base), tmp).eval()
        worst = agree_max(worst, "PEFT reloaded vs ours", max_diff(ref, [logits(loaded, s, r)[0] for r in rows]),
                          scale(ref))
    return f"{form}: max |Δ| {worst:.1e}"


def check_fold(s: Subject) -> str:
    """Folded evaluation (``fold()``) equals unfolded, and ``unfold()`` restores it."""
    adapter = s.adapter()
    unfolded = logits(adapter, s, TEXTS)
    adapter.fold()
    folded = logits(adapter, s, TEXTS)
    adapter.unfold()
    again = logits(adapter, s, TEXTS)
    agree("unfolded again", max_diff(unfolded, again), scale(unfolded))
    return agree("folded vs unfolded", max_diff(unfolded, folded), scale(unfolded))


def check_identity(s: Subject) -> str:
    """A zero-initialised method, freshly attached, is the backbone as a user calls it (no
    position ids, unpadded rows)."""
    cls = METHODS.get(s.method)
    if not cls.identity_at_init:
        raise NotApplicable("not zero-initialised: attaching changes the function")
    adapter = s.attach().eval()
    rows = [[r] for r in TEXTS]
    with torch.no_grad():
        base = [s.base(input_ids=torch.tensor(r)).logits[0] for r in rows]
    return agree("attached vs backbone", max_diff(base, [logits(adapter, s, r)[0] for r in rows]), scale(base))


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


@dataclass(frozen=True)
class Feature:
    name: str
    title: str
    check: Callable[[Subject], str]


FEATURES: tuple[Feature, ...] = (
    Feature("train", "forward+backward", check_train),
    Feature("padding", "padding invariance", check_padding),
    Feature("greedy", "greedy: cache = no cache", check_greedy),
    Feature("beam", "beam: cache = no cache", check_beam),
    Feature("checkpointing", "gradient checkpointing", check_checkpointing),
    Feature("attention", "SDPA = eager", check_attention),
    Feature("bf16", "bf16", check_bf16),
    Feature("save_load", "save/load", check_save_load),
    Feature("peft", "PEFT round trip", check_peft),
    Feature("fold", "folded = unfolded", check_fold),
    Feature("identity", "identity at init", check_identity),
)
FEATURE_NAMES = tuple(f.name for f in FEATURES)
