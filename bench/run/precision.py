"""Training precision: ``fp32``, or ``bf16-mixed``, and what ``auto`` means on a device.

``bf16-mixed``: the forward and the loss run under ``torch.autocast(dtype=bfloat16)``, so
matrix products (linear layers, attention) run in bf16 while autocast keeps norms, softmax
and losses in fp32; trainable parameters, their gradients and the optimizer state stay
fp32 (the master weights). bf16 has fp32's exponent range, so no loss scaling is needed.
Evaluation runs in fp32 whatever the training precision (``fp32_evaluation``, below).

Two things are ours, measured on SmolLM2-135M on a 2-core AVX-512 CPU (README "Performance"):

* **Frozen matmul weights are cast to bf16 once** (``Precision.prepare``). Autocast caches
  its cast of a weight only for leaves that require grad, so every step re-cast every frozen
  weight of the backbone (a fifth of the ``aten::copy_`` time of a bf16 step). The cast is
  exactly the one autocast applies: the same round-to-nearest bf16 values reach the same
  bf16 kernels, so the model computes the same numbers (``tests/test_precision.py`` checks
  logits and losses bit for bit). Only weights of ``nn.Linear`` and GPT-2's ``Conv1D`` are
  cast, whose every use is an autocast bf16 op, and never one shared with another kind of
  module (SmolLM2's output layer is its input embedding, whose lookups must stay fp32);
  trainable tensors are never cast. Every forward must therefore run under ``autocast()``
  (outside it, fp32 inputs meet bf16 weights and torch raises: loud, never silent).
* **Attention uses SDPA's math backend on CPU.** CPU's flash-attention kernel in bf16 has a
  backward 2-4x slower than in fp32; the math backend on CPU upcasts bf16 inputs to fp32
  inside, so it is both faster here and closer to fp32. On CUDA the default kernels stay.

``auto`` is resolved once, before cells are pinned (their id holds the resolved value,
``bench/run/matrix.py`` ``Cell.pinned``): bf16-mixed on CUDA when
``torch.cuda.is_bf16_supported()``, and on a CPU whose flags include ``avx512_bf16`` or
``amx_bf16`` unless deterministic algorithms are on (the reproducible mode pins ATen to
AVX2, which has no bf16 arithmetic); fp32 elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from bench.core.config import PRECISIONS, ConfigError

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
FAST_ATEN_CAPABILITIES = ("AVX512", "AMX")  # ATen levels that may use the CPU's bf16 instructions


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_fast(device: torch.device | str, deterministic: bool = False) -> tuple[bool, str]:
    """Whether ``device`` runs bf16 matmuls faster than fp32, and why (for messages)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():  # a remote worker's GPU: the driver cannot ask it
            return True, "CUDA (not visible here; GPUs since Ampere run bf16)"
        ok = torch.cuda.is_bf16_supported()
        return ok, f"CUDA {'with' if ok else 'without'} bf16 support"
    if dev.type != "cpu":
        return False, f"{dev.type}: not measured, fp32"
    flags = sorted(set(BF16_CPU_FLAGS) & cpu_flags())
    if not flags:
        return False, f"CPU without {' or '.join(BF16_CPU_FLAGS)}"
    if deterministic:
        return False, "reproducible mode: CPU kernels pinned to AVX2, which has no bf16 arithmetic"
    capability = torch.backends.cpu.get_cpu_capability()
    if not capability.startswith(FAST_ATEN_CAPABILITIES):
        return False, f"ATen runs at {capability} (ATEN_CPU_CAPABILITY), without bf16 arithmetic"
    return True, f"CPU with {', '.join(flags)}"


def resolve(requested: str, device: torch.device | str, deterministic: bool = False) -> str:
    """``requested`` with ``auto`` replaced by what this device runs fast."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    return "bf16-mixed" if bf16_fast(device, deterministic)[0] else "fp32"


def _matmul_weight_owner(module: nn.Module) -> bool:
    """A module whose parameters are used only by one autocast-bf16 matmul op."""
    return isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D" and hasattr(module, "nf"))


def cast_frozen_matmul_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast, in place, every frozen fp32 parameter owned only by matmul modules to ``dtype``;
    returns how many elements were cast (see the module doc for why this is the same model)."""
    owners: dict[int, list[nn.Module]] = {}
    params: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append(module)
                params[id(p)] = p
    cast = 0
    for key, p in params.items():
        if p.requires_grad or p.dtype != torch.float32 or not all(map(_matmul_weight_owner, owners[key])):
            continue
        p.data = p.data.to(dtype)
        cast += p.numel()
    return cast


def upcast_frozen_matmul_weights(model: nn.Module) -> list[nn.Parameter]:
    """Cast, in place, every frozen bf16 parameter owned only by matmul modules back to fp32
    (exact: every bf16 value is an fp32 value); returns them, for ``cast_back``."""
    done = []
    for module in model.modules():
        if not _matmul_weight_owner(module):
            continue
        for p in module._parameters.values():
            if p is not None and not p.requires_grad and p.dtype == torch.bfloat16:
                p.data = p.data.float()
                done.append(p)
    return done


@contextlib.contextmanager
def fp32_evaluation(model: nn.Module) -> Iterator[None]:
    """Evaluation in fp32 whatever the training precision. A bf16 product's rounding depends
    on the shape of the batch it runs in, so a bf16 evaluation's predictions would depend on
    which examples shared a batch (measured on the default suite's SmolLM2 residual_prefix
    cell: 1 of 200 SST-2 predictions flipped between batch 1 and 32, label scores moved by up
    to 0.25); in fp32 they agree within 1e-3 (tests/test_batch_invariance_real.py). A
    bf16-mixed cell's frozen weights come back to fp32 for it (the same values: the model it
    trained) and go back to bf16 afterwards, for training to go on."""
    upcast = upcast_frozen_matmul_weights(model)
    try:
        yield
    finally:
        for p in upcast:
            p.data = p.data.to(torch.bfloat16)


@dataclass(frozen=True)
class Precision:
    """A resolved precision on a device: the context the forward runs in, and the one-off
    preparation of the model."""

    name: str  # fp32 | bf16-mixed
    device: torch.device

    @classmethod
    def of(cls, requested: str, device: torch.device, deterministic: bool | None = None) -> Precision:
        if deterministic is None:
            deterministic = torch.are_deterministic_algorithms_enabled()
        return cls(resolve(requested, device, deterministic), device)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype matrix products run in (whose peak MFU is measured against)."""
        return torch.bfloat16 if self.name == "bf16-mixed" else torch.float32

    def prepare(self, model: nn.Module) -> int:
        """Before the first forward: frozen matmul weights in bf16 (bf16-mixed only)."""
        return cast_frozen_matmul_weights(model, self.dtype) if self.name == "bf16-mixed" else 0

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The context of every training forward (evaluation runs in fp32: ``fp32_evaluation``)."""
        if self.name != "bf16-mixed":
            yield
            return
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
            if self.device.type == "cpu":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            yield
