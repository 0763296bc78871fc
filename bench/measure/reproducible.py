"""Reproducible mode: the same cell gives the same bits on any x86 machine with AVX2.

What makes CPU kernels differ between machines with the same packages, seeds and thread
count is the instruction set each library picks at run time: ATen's vectorised kernels
(AVX2 or AVX-512), MKL's GEMM code paths and oneDNN's JIT kernels. The mode pins each to
AVX2 through the variables the libraries read when they first dispatch, turns on
``torch.use_deterministic_algorithms`` and fixes the thread count (reductions split by
thread give different bits at 1 and 2 threads).

The variables only work in a process that has not run a kernel yet, so cells run in fresh
worker processes that inherit them (``subprocess``, ``local`` with isolation, Ray, Slurm);
each worker checks that ATen really runs at the pinned level before it trains. On CUDA the
mode turns on deterministic algorithms (and cuBLAS's workspace setting), which makes re-runs
on one GPU model repeatable but not bit-identical across GPU models.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2,STRICT",  # MKL conditional numerical reproducibility
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # required by deterministic cuBLAS
}
PINNED_CAPABILITY = "AVX2"
DEFAULT_THREADS = 2


class ReproducibilityError(RuntimeError):
    """The mode's settings did not take effect in this process."""


def export_env() -> None:
    """Put the pinned variables into this process's environment, for the workers it starts."""
    os.environ.update(PINNED_ENV)


def enter_worker(threads: int) -> None:
    """In a fresh worker: deterministic algorithms, fixed threads, and a check that the
    pinned instruction set is the one in use (it is not if a kernel ran before the
    variables were set)."""
    import torch

    missing = {k: v for k, v in PINNED_ENV.items() if os.environ.get(k) != v}
    if missing:
        raise ReproducibilityError(f"reproducible mode: the worker lacks {sorted(missing)}")
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != PINNED_CAPABILITY:
        raise ReproducibilityError(f"reproducible mode: ATen runs at {capability}, not {PINNED_CAPABILITY} "
                                   "(the process ran kernels before the mode's variables were set)")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build_line(prefix: str) -> str:
    import torch

    for line in torch.__config__.show().splitlines():
        if prefix in line:
            return line.strip(" -")
    return ""


def kernel_provenance() -> dict[str, str]:
    """What decides this process's CPU kernel bits: CPU model, instruction sets in use,
    library versions, their pinning variables, determinism and threads."""
    import torch

    return {
        "cpu_model": cpu_model(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": _build_line("Math Kernel Library") if torch.backends.mkl.is_available() else "",
        "mkl_cbwr": os.environ.get("MKL_CBWR", ""),
        "onednn": _build_line("MKL-DNN") if torch.backends.mkldnn.is_available() else "",
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "deterministic_algorithms": str(torch.are_deterministic_algorithms_enabled()).lower(),
        "threads": str(torch.get_num_threads()),
    }


def is_pinned(kernels: dict[str, str]) -> bool:
    """Whether a row's kernel provenance says it ran in reproducible mode."""
    return (kernels.get("aten_cpu_capability") == PINNED_CAPABILITY
            and kernels.get("mkl_cbwr") == PINNED_ENV["MKL_CBWR"]
            and kernels.get("onednn_max_cpu_isa") == PINNED_ENV["ONEDNN_MAX_CPU_ISA"]
            and kernels.get("deterministic_algorithms") == "true")
