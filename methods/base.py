"""The method plugin interface: a typed config and a class that adapts a frozen model.

A method never owns a training loop. ``Method.attach`` receives a backbone whose weights
are all frozen (the task head, if any, is already trainable) and returns an ``Adapter``:
an ``nn.Module`` whose ``forward`` takes the backbone's keyword arguments and whose
trainable parameters are exactly what the method trains.

The harness knows no method by name. What it needs beyond the backbone's own structure an
adapter declares (``Adapter.extra_positions``, ``extra_keys_per_layer``,
``inserted_modules``, ``extra_flops``: what the FLOP count of ``bench.measure.flops`` reads).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import types
import typing
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from bench.core.config import ConfigError, check_fields
from bench.core.registry import Registry

if TYPE_CHECKING:
    from peft import PeftConfig


@dataclass(frozen=True)
class MethodConfig:
    """Options shared by every method. Subclasses add fields with ``metadata={"help": ...}``."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> MethodConfig:
        return check_fields(cls, values, where)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Anatomy:
    """The shape facts about a backbone that methods need, read from its config."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    is_causal: bool

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def of(cls, model: nn.Module) -> Anatomy:
        config = model.config.get_text_config()
        heads = config.num_attention_heads
        hidden = config.hidden_size
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        is_causal = not getattr(config, "is_encoder_decoder", False) and config.model_type not in (
            "bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra", "xlm-roberta",
        )
        return cls(config.model_type, config.num_hidden_layers, hidden, heads, kv_heads,
                   head_dim, is_causal)


# Modules that read a transformer layer's input, by name (LLaMA family, GPT-2's fused c_attn,
# BERT), and which of query/key/value each computes. In layer 0 their input is the embedding
# output, which needs no gradient unless something before layer 0 trains.
LAYER_INPUT_PROJECTIONS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "query": "q", "key": "k", "value": "v",
                           "c_attn": "qkv", "qkv_proj": "qkv", "Wqkv": "qkv"}


def transformer_layers(model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The backbone's list of transformer layers: its first ModuleList of ``num_layers`` modules."""
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise ValueError(f"no ModuleList of {num_layers} transformer layers found in {type(model).__name__}")


@dataclass
class AttachContext:
    """What a method may use while attaching: tokenizer, shape facts, seed."""

    tokenizer: Any
    anatomy: Anatomy
    seed: int
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each token's position counted from its row's first real token (padding gets 0).

    Backbones default to ``arange`` positions, which count left padding: a row's positions
    (absolute embeddings) or its distance to a cached prefix (rotary) would then depend on
    how much padding the batch gave it. This is the rule ``generate`` uses."""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def first_position(model: nn.Module) -> int:
    """The position id of a row's first real token: 0, except for embeddings that count from
    past the padding index (RoBERTa and its kin: ``padding_idx + 1``, padding at
    ``padding_idx``), whose pretrained position table is laid out that way. Asked on every
    forward, so answered once per model."""
    if model not in _FIRST_POSITION:
        start = 0
        for module in model.modules():
            pad = getattr(module, "padding_idx", None)
            # the rule is a method of the embeddings (transformers 5) or a function of its module (4.x)
            counts_past_padding = hasattr(module, "create_position_ids_from_input_ids") or hasattr(
                sys.modules.get(type(module).__module__), "create_position_ids_from_input_ids")
            if isinstance(pad, int) and counts_past_padding and hasattr(module, "position_embeddings"):
                start = pad + 1
                break
        _FIRST_POSITION[model] = start
    return _FIRST_POSITION[model]


_FIRST_POSITION: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def takes_positions(model: nn.Module) -> bool:
    """Whether ``model.forward`` accepts ``position_ids`` (every HF decoder and BERT does).
    Asked on every forward, so answered once per class."""
    return _forward_takes_positions(type(model))


@functools.cache
def _forward_takes_positions(cls: type) -> bool:
    return "position_ids" in inspect.signature(cls.forward).parameters


def check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], what: str) -> None:
    """``state`` holds exactly ``expected``'s names, each with its shape; else KeyError/ValueError."""
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise KeyError(f"{what} state does not match: missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")
    for name, value in state.items():
        if expected[name].shape != value.shape:
            raise ValueError(f"{what} tensor {name!r} has shape {tuple(value.shape)}, "
                             f"expected {tuple(expected[name].shape)}")


def with_positions(model: nn.Module, kwargs: dict[str, Any], offset: int | torch.Tensor = 0) -> dict[str, Any]:
    """``kwargs`` with ``position_ids`` from the attention mask (plus ``offset``) when the
    caller gave none, counted from the model's ``first_position``. Given positions are the
    text's own and get the offset too. ``offset`` is a number, or a (batch, 1) tensor of one
    offset per row (packed adapters' prefixes)."""
    positions = kwargs.get("position_ids")
    mask = kwargs.get("attention_mask")
    if positions is None and mask is not None and mask.dim() == 2 and takes_positions(model):
        positions = positions_from_mask(mask)
        start = first_position(model)
        if start:
            positions = (positions + start).masked_fill(mask == 0, start - 1)
    if positions is None or not takes_positions(model):
        return kwargs
    if isinstance(offset, torch.Tensor):
        return dict(kwargs, position_ids=positions + offset.to(positions.dtype))
    return dict(kwargs, position_ids=positions + offset if offset else positions)


class Adapter(nn.Module):
    """A backbone plus a method's trainable state. ``forward`` mirrors the backbone's.

    Positions come from the attention mask (``with_positions``): an example's outputs must
    not depend on the padding its batch gave it. ``generate`` derives them from the mask
    itself."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **kwargs: Any) -> Any:
        return self.model(**with_positions(self.model, kwargs))

    def generate(self, **kwargs: Any) -> torch.Tensor:
        return self.model.generate(**kwargs)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors that make up the trained adapter (saved as safetensors)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a saved adapter state in; names and shapes must match exactly."""
        check_state(self.trainable_state_dict(), state, "adapter")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)
        self.unfold()  # a folded prefix would be stale

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors one deploys: what inference needs once training-only parts (e.g. a
        reparameterisation MLP) are folded away. Its size is the adapter's deployed size.
        Default: the trained state itself."""
        return self.trainable_state_dict()

    def load_inference_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a saved ``inference_state_dict`` in; the adapter then serves inference (it
        need not be able to train again). Default: the trained state."""
        self.load_trainable_state_dict(state)

    def fold(self) -> None:
        """Prepare for inference (e.g. compute a reparameterised prefix once). Default: none."""

    def unfold(self) -> None:
        """Undo ``fold`` before training continues. Default: none."""

    def step_log(self) -> dict[str, list[float]]:
        """Per-step values worth recording (e.g. gate openings). Default: nothing."""
        return {}

    def peft_export(self, task_type: str) -> tuple[PeftConfig, dict[str, torch.Tensor]] | None:
        """This adapter in HF PEFT's format (``prefix-bench export --format peft``): a PEFT
        config for ``task_type`` ("CAUSAL_LM", "SEQ_CLS") and the method's tensors keyed as
        ``peft.get_peft_model_state_dict`` keys them, such that PEFT's model built from that
        config on the same backbone and holding those tensors computes this adapter's
        logits. The method's own tensors only: a task head is the harness's to add. None
        (the default): the method has no PEFT equivalent; the method class says which PEFT
        type it exports to in ``Method.peft_export_type``. Raise ConfigError, naming the
        option, when only this configuration of an exportable method has none."""
        return None
    @classmethod
    def packed_forward(cls, adapters: Sequence[Adapter], rows: Sequence[int], **kwargs: Any) -> Any:
        """One forward of ``adapters[0]``'s backbone over a batch whose first ``rows[0]`` rows
        belong to ``adapters[0]``, the next ``rows[1]`` to ``adapters[1]``, and so on: each
        row as its own adapter alone would compute it (up to float rounding). The adapters
        are of this class, attached by one method config (prefix lengths may differ) to
        copies of one frozen backbone. Implemented where ``Method.packable`` is set; the
        harness (bench/run/packed.py) then trains several cells in one pass."""
        raise NotImplementedError(f"{cls.__name__} cannot run packed with other adapters")


    # -- what the harness's FLOP count needs (bench/measure/flops.py) --------------------------------
    # The harness counts the backbone's own matrix products itself: every Linear/Conv1D in its
    # layers at every position, attention over the positions and keys, the output layer, and
    # the gradients a training step computes for them. An adapter declares what it changes;
    # the defaults declare nothing, which is right for an adapter that only unfreezes backbone
    # weights (full fine-tuning). The count assumes, as holds for every built-in method, that
    # something trainable acts in layer 0, so gradients reach every layer.

    @property
    def extra_positions(self) -> int:
        """Positions prepended to every input row (prompt tuning's P soft tokens): they pass
        through every layer and are attended to. Taken as trainable, so the gradient reaches
        layer 0's input. Default: 0."""
        return 0

    @property
    def extra_keys_per_layer(self) -> int:
        """Keys/values added to each attention layer (a prefix's P cached keys): attended to by
        every position. Taken as trainable, so layer 0's keys and values need gradients.
        Default: 0."""
        return 0

    def inserted_modules(self) -> list[nn.Module]:
        """Modules this adapter placed inside the backbone (LoRA's A and B): their matrix
        products are the adapter's to count in ``extra_flops``, not the backbone's. Their
        trainable weights still tell the harness which layer-0 projections need gradients.
        Default: none."""
        return []

    def extra_flops(self, batch: int, seq_len: int, *, train: bool, folded: bool) -> int:
        """Matmul FLOPs (one multiply-add = 2) of everything else the adapter computes in one
        step on ``batch`` rows of ``seq_len`` real positions (before ``extra_positions``):
        forward, plus with ``train`` the weight and input gradients autograd computes for it.
        ``folded``: after ``fold`` (e.g. a prefix generator no longer runs). Examples:
        Prefix-Tuning+'s memory products on every position, a prefix MLP on the P prefix rows,
        LoRA's A and B. Elementwise work (gates, scales, norms) is not counted. Default: 0."""
        return 0


C = TypeVar("C", bound=MethodConfig)


class Method(ABC, Generic[C]):
    """A parameter-efficient (or reference) fine-tuning method, generic over its config type:
    ``class MyMethod(Method[MyConfig])`` with ``Config = MyConfig`` (the class that parses
    options; the type parameter gives ``self.config`` its type)."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    uses_prefix_length: ClassVar[bool] = True
    default_lr: ClassVar[float] = 1e-3
    # Part of every cell id (bench/core/identity.py), beside a digest of the method's source:
    # bump it to mark a change of behaviour the source digest cannot see (e.g. a dependency).
    version: ClassVar[str] = "1"
    # The PEFT method (a ``peft.PeftType`` name) this method's adapters export to through
    # ``Adapter.peft_export``; None: no PEFT equivalent. The contract test checks both agree.
    peft_export_type: ClassVar[str | None] = None
    # True when attaching leaves the model's function unchanged (a zero-initialised update):
    # the contract test then requires the base logits from the freshly attached adapter
    identity_at_init: ClassVar[bool] = False
    config: C
    # True when several cells of this method can train in one batched pass (bench/run/packed.py):
    # attaching leaves every backbone weight frozen and unchanged, all trainable state is the
    # method's own (besides a task head), and the adapter implements ``packed_forward``
    packable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass of ``Method[X]`` parses options with ``Config``, a subclass of ``X``."""
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            args = typing.get_args(base) if typing.get_origin(base) is Method else ()
            if args and isinstance(args[0], type) and not issubclass(cls.Config, args[0]):
                raise TypeError(f"{cls.__qualname__} is a Method[{args[0].__name__}] but its Config "
                                f"{cls.Config.__name__} is not a {args[0].__name__}")

    def __init__(self, config: C, prefix_length: int | None) -> None:
        if self.uses_prefix_length and (not isinstance(prefix_length, int) or prefix_length < 1):
            raise ConfigError(f"method {self.name!r} needs a prefix_length >= 1, got {prefix_length!r}")
        self.config = config
        self.prefix_length = prefix_length

    @abstractmethod
    def attach(self, model: nn.Module, ctx: AttachContext) -> Adapter:
        """Wrap ``model`` (frozen) and create this method's trainable parameters."""

    def trainable_count(self, adapter: Adapter, anatomy: Anatomy) -> int:
        """How many parameters ``attach`` made trainable in ``adapter`` (the method's own, not a
        task head); the contract test compares it with the adapter's trainable parameters
        right after ``attach`` on a frozen backbone. Default: that count itself. Override it
        with a closed form (from ``anatomy`` and ``adapter.model``'s shapes) to have the test
        check ``attach`` against it."""
        return sum(p.numel() for p in adapter.parameters() if p.requires_grad)


METHODS: Registry[type[Method[Any]]] = Registry("method", Method)
M = TypeVar("M", bound=type[Method[Any]])


def register_method(name: str):
    """Class decorator: register a ``Method`` subclass under ``name``."""

    def deco(cls: M) -> M:
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def load_adapter(adapter: Adapter, path: str | Path) -> None:
    """Load a trained state written by ``bench.run.artefacts.save_adapter`` (safetensors) into an
    adapter attached the same way (same method, config, prefix length and backbone)."""
    from safetensors.torch import load_file

    device = next(adapter.parameters()).device
    adapter.load_trainable_state_dict(load_file(str(path), device=str(device)))


def load_inference_adapter(adapter: Adapter, path: str | Path) -> None:
    """Load a deployed state written by ``bench.run.artefacts.save_state`` from
    ``inference_state_dict`` (safetensors) into an adapter attached the same way."""
    from safetensors.torch import load_file

    device = next(adapter.parameters()).device
    adapter.load_inference_state_dict(load_file(str(path), device=str(device)))


def field_help(cls: type) -> dict[str, str]:
    """Field name -> help text, for ``prefix-bench list methods``."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, f.type)
        tname = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
        if isinstance(tp, types.UnionType):
            tname = str(tp)
        out[f.name] = f"{tname} = {f.default!r}: {f.metadata.get('help', '')}"
    return out
