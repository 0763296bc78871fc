"""What reporting needs to know about a task, as plain data.

Tables need a metric's direction, whether a task's metrics are corpus statistics (a subset
score is comparable to nothing) and how a benchmark such as GLUE averages its tasks. The
task plugins know this; the reporting layer must not import them (nor torch through them),
so the top layer hands it a ``{task name: TaskFacts}`` mapping (``tasks.task_facts()``).
A task missing from the mapping (an old or third-party results file) gets the defaults:
higher is better, not corpus-level, on no board.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TaskFacts:
    name: str
    higher_is_better: Mapping[str, bool] = field(default_factory=dict)  # metric -> direction
    corpus_metrics: bool = False
    board: str = ""  # a benchmark whose average counts this task (e.g. "glue")
    board_unit: str = ""  # tasks sharing a unit count once on the board (MNLI matched/mismatched)
    score_metrics: tuple[str, ...] = ()  # averaged into the task's one board score


Facts = Mapping[str, TaskFacts]


def higher_is_better(facts: Facts, task: str, metric: str) -> bool:
    f = facts.get(task)
    return True if f is None else f.higher_is_better.get(metric, True)


def corpus_metrics(facts: Facts, task: str) -> bool:
    f = facts.get(task)
    return f is not None and f.corpus_metrics


def board_tasks(facts: Facts, board: str) -> list[str]:
    """The tasks a board averages, in registration order."""
    return [name for name, f in facts.items() if board and f.board == board]


def board_task_score(f: TaskFacts, metrics: Mapping[str, float]) -> float | None:
    """A task's one number on its board: the mean of its score metrics; None if any is missing."""
    values = [metrics.get(n) for n in f.score_metrics]
    if not values or any(v is None for v in values):
        return None
    return float(sum(values) / len(values))


def board_average(facts: Facts, board: str,
                  scores_by_task: Mapping[str, Mapping[str, float]]) -> tuple[float | None, list[str]]:
    """(mean of the board's task scores over the tasks present, the board's tasks missing).
    Tasks sharing a unit are averaged first and count once; the mean covers only the tasks
    given, so show the missing list next to it."""
    members = board_tasks(facts, board)
    scored = {t: board_task_score(facts[t], m) for t, m in scores_by_task.items() if t in members}
    present = {t: s for t, s in scored.items() if s is not None}
    missing = [t for t in members if t not in present]
    singles = [s for t, s in present.items() if not facts[t].board_unit]
    units: dict[str, list[float]] = {}
    for t in members:  # a unit's tasks in board order, each unit after the single tasks
        if t in present and facts[t].board_unit:
            units.setdefault(facts[t].board_unit, []).append(present[t])
    scores = singles + [sum(v) / len(v) for v in units.values()]
    if not scores:
        return None, missing
    return float(sum(scores) / len(scores)), missing
