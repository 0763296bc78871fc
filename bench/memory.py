"""Peak memory of the work being measured: CUDA max allocated, or the process's peak RSS."""

from __future__ import annotations

import resource
import sys

import torch


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, kind). On CPU the peak RSS is a process-lifetime high-water mark: run cells in
    a child process (executor option) for a per-cell figure."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_peak_rss_process"


def peak_reserved_bytes(device: torch.device) -> int:
    """CUDA max reserved memory (what the caching allocator held); 0 elsewhere."""
    return int(torch.cuda.max_memory_reserved(device)) if device.type == "cuda" else 0
