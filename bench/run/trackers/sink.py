"""The tracker's own process. No process that trains ever imports a tracker backend (MLflow's
client alone adds ~140 MB resident, which an in-process cell's CPU peak memory would count):
the driver hands each stored row to this child and waits for it to be logged, so the child
idles while cells train. It dies with the driver (bench/run/orphans.py)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from typing import Any

from bench.core.config import ConfigError
from bench.run.trackers.base import TRACKERS, TrackedRun, Tracker

START_TIMEOUT_S = 300.0  # importing the backend on a loaded machine
LOG_TIMEOUT_S = 600.0  # one cell's run into a slow store


class TrackerSink:
    """The driver's handle: :meth:`log` sends one run and returns when it is logged. A
    backend that cannot start is a ConfigError before any cell runs; a run that cannot be
    logged is a warning through ``warn`` (the row is stored already), and a sink that died
    or hung is stopped and logs nothing more."""

    def __init__(self, tracker: Tracker, warn: Callable[[str], None]) -> None:
        from bench.run import orphans

        self.name, self.warn = tracker.name, warn
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of the driver's
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(tracker.name, tracker.uri, child, os.getpid()), daemon=True)
        with orphans.sigint_ignored():
            self.proc.start()
        child.close()
        reply = self._ask(None, START_TIMEOUT_S)
        if reply is None or reply[0] != "ok":
            self.close()
            raise ConfigError(f"--tracker {self.name} could not start ({reply[1] if reply else 'no answer'}); "
                              "nothing was run")

    def prepare(self, experiments: Iterable[str]) -> None:
        reply = self._ask(("prepare", sorted(set(experiments))), START_TIMEOUT_S)
        if reply is None or reply[0] != "ok":
            self.close()
            raise ConfigError(f"--tracker {self.name}: its store is not usable "
                              f"({reply[1] if reply else 'no answer'}); nothing was run")

    def log(self, run: TrackedRun) -> None:
        if self.proc is None:
            return
        reply = self._ask(("log", run), LOG_TIMEOUT_S)
        if reply is None:
            self.warn(f"--tracker {self.name} stopped answering; no further cell is logged")
            self.close()
        elif reply[0] != "ok":
            self.warn(f"--tracker {self.name} could not log cell {run.name} ({reply[1]}); its row is stored")

    def _ask(self, message: Any, timeout: float) -> tuple[str, str] | None:
        try:
            if message is not None:
                self.conn.send(message)
            if not self.conn.poll(timeout):
                return None
            return self.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            return None

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self.conn.send(None)
            self.proc.join(10)
        except (OSError, BrokenPipeError):
            pass
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()
        self.proc = None


def _serve(name: str, uri: str, conn: Any, parent: int) -> None:
    """The child: make the tracker (importing its backend), then answer each message."""
    import signal

    from bench.run import orphans

    orphans.die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops us
    try:
        import bench.run.trackers  # noqa: F401  (registration)

        tracker = TRACKERS.get(name)(uri)
        tracker.load_backend()
        conn.send(("ok", ""))
    except Exception as err:
        conn.send(("error", f"{type(err).__name__}: {str(err)[:500]}"))
        return
    while True:
        message = conn.recv()
        if message is None:
            return
        kind, payload = message
        try:
            tracker.prepare(payload) if kind == "prepare" else tracker.log(payload)
            conn.send(("ok", ""))
        except Exception as err:  # reported to the driver, which warns (or refuses to start)
            conn.send(("error", f"{type(err).__name__}: {str(err)[:500]}"))
