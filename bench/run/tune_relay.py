"""The parts of a Ray Tune search that run outside a trial cell's own process, kept free of
torch so that Tune's trial actors start fast (bench/run/executors/tune_trials.py runs them).

A Tune trial here is a *relay*: the trial cell itself runs as an ordinary Ray task that the
driver launches once the cell's relay has started. So a trial the scheduler stops still
finishes its cell (best parameters back, held-out slice scored, row appended) in a process
whose life Tune does not control: Tune ends a stopped trial's actor after a short grace
period, which a cell's last evaluation and its row could outlast. The cell posts each
periodic held-out score to the mailbox, the relay hands it to ``tune.report``, and the
driver's callback, which sees the scheduler's decision, posts the verdict back to the cell.
``Grouped`` gives each group of trials (those differing only in lr) a scheduler of its own.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler

DONE = "done"  # the cell's task has ended: its relay returns
GO, STOP, DETACH = "go", "stop", "detach"  # a verdict: train on; stop now; train on, no more reports
METRIC, TIME = "holdout_score", "step"  # what a relay reports: the held-out score at a training step


class Mailbox:
    """Queues keyed by trial cell id between the cells, their relays and the driver (an async
    Ray actor, one per search: every wait is an ``await``, none holds a thread)."""

    def __init__(self) -> None:
        self._scores: defaultdict[str, asyncio.Queue] = defaultdict(asyncio.Queue)
        self._verdicts: defaultdict[str, asyncio.Queue] = defaultdict(asyncio.Queue)
        self._started: asyncio.Queue = asyncio.Queue()

    async def hello(self, key: str) -> None:
        self._started.put_nowait(key)

    async def started(self, timeout: float) -> list[str]:
        """Cells whose relay has started since the last call (waits up to ``timeout`` s for one)."""
        try:
            keys = [await asyncio.wait_for(self._started.get(), timeout)]
        except TimeoutError:
            return []
        while not self._started.empty():
            keys.append(self._started.get_nowait())
        return keys

    async def post(self, key: str, item: Any) -> None:
        self._scores[key].put_nowait(item)

    async def next(self, key: str) -> Any:
        return await self._scores[key].get()

    async def decide(self, key: str, verdict: str) -> None:
        self._verdicts[key].put_nowait(verdict)

    async def verdict(self, key: str) -> str:
        return await self._verdicts[key].get()


def relay(config: dict[str, Any], mailbox: Any = None) -> None:
    """One Tune trial: announce the trial cell ``config["cell"]``, then report each score it
    posts until its task ends. A stop ends this function inside ``tune.report``."""
    key = config["cell"]
    ray.get(mailbox.hello.remote(key))
    while True:
        item = ray.get(mailbox.next.remote(key))
        if item == DONE:
            return
        step, score = item
        tune.report({TIME: step, METRIC: score})


class Verdicts(tune.Callback):
    """In the driver: each reported score's fate, posted back to the cell waiting on it. Tune
    marks a result ``done`` exactly when it will stop the trial (the scheduler said so), and the
    relay then ends inside ``tune.report``, so the verdict is posted from here."""

    def __init__(self, mailbox: Any) -> None:
        self.mailbox = mailbox

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.mailbox.decide.remote(trial.config["cell"], STOP if result.get("done") else GO)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.mailbox.decide.remote(trial.config["cell"], DETACH)  # no scheduler is left to ask


class Grouped(FIFOScheduler):
    """One scheduler per group of trials, so that a trial is only ever compared with trials
    of its own group (held-out scores of other tasks or methods are not comparable). Trials
    start in grid order, as FIFO starts them."""

    def __init__(self, schedulers: dict[str, Any], group: dict[str, str]) -> None:
        super().__init__()
        self._schedulers, self._group = schedulers, group

    def _of(self, trial: Any) -> Any:
        return self._schedulers[self._group[trial.config["cell"]]]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # each group's scheduler has its own metric and direction

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "ASHA per group: " + "; ".join(s.debug_string() for s in self._schedulers.values())
