"""Peak memory of the work being measured: CUDA max allocated, or peak RSS on CPU.

CPU, Linux: the peak is the kernel's per-address-space high-water mark (``VmHWM`` in
``/proc/self/status``), reset at the start of each cell by writing ``5`` to
``/proc/self/clear_refs`` (Linux >= 4.0), so an in-process cell gets its own peak: what was
resident when it started (the shared backbone) plus what the cell added. Not
``getrusage().ru_maxrss``: Linux carries that over ``fork`` + ``exec``, so a child would
report its parent's peak whatever it did. Elsewhere (macOS, a kernel refusing the reset) the process lifetime
``ru_maxrss`` is reported, as ``cpu_peak_rss_process``, which tables mark as an upper bound.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys

import torch

from bench.core.record import PROCESS_PEAK

CELL = "cpu_peak_rss_cell"        # high-water mark since this cell started
PROCESS = PROCESS_PEAK  # whole process lifetime: an upper bound

_reset_done = False


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS so an earlier cell's garbage does not sit in the
    next cell's starting RSS (glibc only; a no-op elsewhere)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def reset_cpu_peak() -> bool:
    """Start a new CPU high-water mark; True when the kernel accepted the reset."""
    global _reset_done
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        _reset_done = _status_kib("VmHWM") is not None
    except OSError:
        _reset_done = False
    return _reset_done


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_cpu_peak()


def cpu_peak_bytes() -> tuple[int, str]:
    hwm = _status_kib("VmHWM") if _reset_done else None
    if hwm is not None:
        return hwm * 1024, CELL
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), PROCESS


def peak_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, kind) since the last ``reset_peak``."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return cpu_peak_bytes()


def peak_reserved_bytes(device: torch.device) -> int:
    """CUDA max reserved memory (what the caching allocator held); 0 elsewhere."""
    return int(torch.cuda.max_memory_reserved(device)) if device.type == "cuda" else 0
