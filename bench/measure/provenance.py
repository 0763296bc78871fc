"""Where a result came from: package versions, git state, device, timestamps."""

from __future__ import annotations

import platform
import subprocess
from datetime import UTC, datetime
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("prefix-bench", "torch", "transformers", "peft", "datasets", "numpy", "scikit-learn",
            "scipy", "safetensors", "lm-eval", "sacrebleu")
REPO_ROOT = Path(__file__).resolve().parents[2]


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


@lru_cache(maxsize=1)
def git_state() -> tuple[str, bool]:
    """(sha, dirty) of the checkout the code runs from; ("", False) outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return sha, dirty
    except (OSError, subprocess.SubprocessError):
        return "", False


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}:{torch.get_num_threads()}threads"


def apply_torch_settings(threads: int, deterministic: bool) -> None:
    """Run this process as a pinned cell says (the worker side of ``Cell.pinned``)."""
    torch.set_num_threads(threads)
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested not in ("cpu", "cuda") and not requested.startswith("cuda:"):
        raise ValueError(f"device {requested!r} is not one of auto, cpu, cuda, cuda:N")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available")
    return torch.device(requested)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
