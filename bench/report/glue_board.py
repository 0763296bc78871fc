"""The GLUE average per backbone, method and prefix length (a pure rendering step).

Each task's metrics are averaged over seeds, then scored as GLUE does
(``bench.core.task_facts.board_average``: a task's score is the mean of its official metrics; MNLI
counts once). The average covers only the tasks that were run, so the table says how
many and which are missing: an average over fewer tasks is not the GLUE benchmark's number.
Failed runs (``bench/report/failures.py``) are left out of the means and shown: a task whose runs
all failed reads "failed" (and counts as missing), one with some failed seeds says how many.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from bench.core.outcome import FAILED, failure
from bench.core.records import ResultRecord, latest_by_cell
from bench.core.task_facts import Facts, board_average, board_task_score, board_tasks


def _task_cell(score: float | None, ok: int, failed: int) -> str:
    text = "" if score is None else f"{score:.4f}"
    if not failed:
        return text
    return FAILED if not ok else f"{text}; {failed} of {ok + failed} failed"


def glue_average_table(records: list[ResultRecord], facts: Facts | None = None) -> pd.DataFrame:
    """Rows (backbone, method, P): each GLUE task's seed-mean score, the average, what is missing.
    ``facts`` says which tasks GLUE averages and how (none given: no table)."""
    facts = facts or {}
    glue_tasks = board_tasks(facts, "glue")
    # (backbone, method, P) -> task -> metric -> values over seeds
    runs: dict[tuple, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    # (backbone, method, P) -> task -> [ok runs, failed runs]
    counts: dict[tuple, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in latest_by_cell(records).values():
        if r.task not in glue_tasks:
            continue
        key = (r.backbone, r.method, "—" if r.prefix_length is None else str(r.prefix_length))
        failed = failure(r) is not None
        counts[key][r.task][failed] += 1
        if not failed:
            for name, value in r.metrics.items():
                runs[key][r.task][name].append(value)
    rows = []
    for key, by_task in sorted(counts.items(), key=lambda kv: tuple(map(str, kv[0]))):
        backbone, method, plen = key
        metrics = {t: {m: sum(v) / len(v) for m, v in ms.items()} for t, ms in runs[key].items()}
        avg, missing = board_average(facts, "glue", metrics)
        shown = {t.removeprefix("glue/"): _task_cell(board_task_score(facts[t], metrics[t]) if t in metrics else None, ok, bad)
                 for t, (ok, bad) in by_task.items()}
        rows.append({"backbone": backbone, "method": method, "P": plen,
                     **{t.removeprefix("glue/"): "" for t in glue_tasks}, **shown,
                     "GLUE average": "—" if avg is None else f"{avg:.4f}",
                     "tasks": len(metrics), "missing": ", ".join(m.removeprefix("glue/") for m in missing)})
    frame = pd.DataFrame(rows)
    if len(frame):  # drop task columns no row has
        frame = frame[[c for c in frame.columns if (frame[c] != "").any()]]
    return frame
