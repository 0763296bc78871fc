"""The GLUE average per backbone, method and prefix length (a pure rendering step).

Each task's metrics are averaged over seeds, then scored as GLUE does
(``tasks.glue.glue_average``: a task's score is the mean of its official metrics; MNLI
counts once). The average covers only the tasks that were run, so the table says how
many and which are missing: an average over fewer tasks is not the GLUE benchmark's number.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from bench.records import ResultRecord, latest_by_cell
from tasks.glue import GLUE_SCORE_TASKS, glue_average, glue_task_score


def glue_average_table(records: list[ResultRecord]) -> pd.DataFrame:
    """Rows (backbone, method, P): each GLUE task's seed-mean score, the average, what is missing."""
    # (backbone, method, P) -> task -> metric -> values over seeds
    runs: dict[tuple, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in latest_by_cell(records).values():
        if r.status == "ok" and r.task in GLUE_SCORE_TASKS:
            plen = "—" if r.prefix_length is None else str(r.prefix_length)
            for name, value in r.metrics.items():
                runs[(r.backbone, r.method, plen)][r.task][name].append(value)
    rows = []
    for (backbone, method, plen), tasks in sorted(runs.items()):
        metrics = {t: {m: sum(v) / len(v) for m, v in ms.items()} for t, ms in tasks.items()}
        avg, missing = glue_average(metrics)
        scores = {t.removeprefix("glue/"): glue_task_score(t, m) for t, m in metrics.items()}
        rows.append({"backbone": backbone, "method": method, "P": plen,
                     **{t.removeprefix("glue/"): "" for t in GLUE_SCORE_TASKS},
                     **{t: "" if s is None else f"{s:.4f}" for t, s in scores.items()},
                     "GLUE average": "—" if avg is None else f"{avg:.4f}",
                     "tasks": len(metrics), "missing": ", ".join(m.removeprefix("glue/") for m in missing)})
    frame = pd.DataFrame(rows)
    if len(frame):  # drop task columns no row has
        frame = frame[[c for c in frame.columns if (frame[c] != "").any()]]
    return frame
