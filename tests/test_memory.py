"""bench/measure/memory.py: a CPU peak per cell. Checked against the kernel's own accounting with
allocations of known size; Linux only (elsewhere the process peak is reported and marked)."""

from __future__ import annotations

import multiprocessing as mp
import sys

import pytest
import torch

from bench.measure import memory

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM / clear_refs are Linux's")
MB = 1 << 20


def _touch(n_bytes: int) -> torch.Tensor:
    return torch.ones(n_bytes // 4, dtype=torch.float32)  # ones: every page written, so resident


@linux
def test_reset_forgets_an_earlier_peak_and_sees_a_new_one():
    big = _touch(800 * MB)
    del big
    assert memory.reset_cpu_peak()
    base, kind = memory.cpu_peak_bytes()
    assert kind == memory.CELL
    x = _touch(300 * MB)
    peak, _ = memory.cpu_peak_bytes()
    del x
    # the earlier 800 MB are forgotten, the 300 MB since the reset are seen
    assert 250 * MB < peak - base < 450 * MB


def _child_peak(queue) -> None:
    memory.reset_cpu_peak()
    queue.put(memory.cpu_peak_bytes())


@linux
def test_a_child_of_a_large_parent_reports_its_own_peak():
    """ru_maxrss is carried over fork + exec: a small child of a large parent read the
    parent's size (the bug behind every perf arm reading 3426 MB)."""
    big = _touch(1000 * MB)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_child_peak, args=(queue,))
    p.start()
    peak, kind = queue.get(timeout=120)
    p.join()
    del big
    assert kind == memory.CELL
    assert peak < 900 * MB  # the child imported torch and nothing else: far below the parent's 1 GB
