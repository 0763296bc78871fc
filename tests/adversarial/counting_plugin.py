"""A test-only method plugin that notes every time a cell starts training: prompt tuning
that appends "seed pid" to the file named by ``COUNTING_PLUGIN_LOG`` when it attaches.
Two drivers on one folder must train each cell once; this log shows whether they did.

Loaded with ``--plugin counting_plugin`` (tests/adversarial on PYTHONPATH) by the drivers
the tests start, never imported by the tests themselves (that would register the method in
the test process) and never registered by the package."""

from __future__ import annotations

import os
import time

from torch import nn

from methods.base import Adapter, AttachContext, register_method
from methods.prompt_tuning import PromptTuning

NAME = "test_counting"
LOG_ENV = "COUNTING_PLUGIN_LOG"
# a file: while it exists, every cell but seed 0's waits after logging its start, so a test can
# signal a driver whose second cell is surely in flight (a tiny cell trains in seconds)
HOLD_ENV = "COUNTING_PLUGIN_HOLD"


@register_method(NAME)
class Counting(PromptTuning):
    paper = "none: a test fixture"

    def attach(self, model: nn.Module, ctx: AttachContext) -> Adapter:
        path = os.environ.get(LOG_ENV)
        if path:  # one O_APPEND write per line: concurrent drivers never interleave
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{ctx.seed} {os.getpid()}\n".encode())
            finally:
                os.close(fd)
        hold = os.environ.get(HOLD_ENV)
        while hold and ctx.seed != 0 and os.path.exists(hold):
            time.sleep(0.05)
        return super().attach(model, ctx)
