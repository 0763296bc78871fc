"""A test-only method plugin that fails on purpose, loaded with ``--plugin faulty_plugin``
(or ``import_plugins``) to prove failure isolation: a cell that raises, runs out of memory
or is killed becomes a failed row while the rest of the matrix runs.

Never registered by the package: tests import it, and unregister it afterwards."""

from __future__ import annotations

import multiprocessing
import os
import signal
from dataclasses import dataclass, field

from torch import nn

from bench.core.config import ConfigError
from methods.base import Adapter, AttachContext, Method, MethodConfig, register_method

MODES = ("raise", "memory", "kill")
NAME = "test_faulty"


@dataclass(frozen=True)
class FaultyConfig(MethodConfig):
    mode: str = field(default="raise", metadata={
        "help": "raise: RuntimeError; memory: MemoryError; kill: SIGKILL the worker process"})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")


@register_method(NAME)
class Faulty(Method):
    paper = "none: a test fixture"
    Config = FaultyConfig
    uses_prefix_length = False

    def attach(self, model: nn.Module, ctx: AttachContext) -> Adapter:
        if self.config.mode == "memory":
            raise MemoryError("test_faulty: simulated out-of-memory")
        if self.config.mode == "kill":
            # only ever in a worker process: killing the test runner itself would prove nothing
            if multiprocessing.parent_process() is None and not os.environ.get("FAULTY_PLUGIN_MAY_KILL"):
                raise RuntimeError("test_faulty: refusing to SIGKILL the main process")
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("test_faulty: deliberate failure")
