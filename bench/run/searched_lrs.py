"""Method defaults per backbone from a committed search, not hand-set: ``bench/searched_lrs.toml``.

A cell whose suite neither sets its learning rate nor searches it takes its (backbone, method)
entry in that file, else the method's ``default_lr``. The file is written by
``prefix-bench searched-lrs`` from a suite's records (the standard suite's, committed in
results/records/standard/): for each (backbone, method) the learning rate its search chose on the
most tasks (a tie: the smaller rate, the safer one for a method that can collapse). Each entry's
comment says what each task chose. Editing the file changes the lr, so the ids, of the cells that
use it: their old rows are never reused.
"""

from __future__ import annotations

import argparse
import math
import re
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

from bench.core.config import ConfigError
from bench.core.records import ResultRecord, read_records, result_rows
from bench.core.safe_names import is_name
from bench.core.suite_file import load_toml

SEARCHED_LRS = Path(__file__).parent.parent / "searched_lrs.toml"
_UNSAFE_TASK = re.compile(r"[^A-Za-z0-9._/-]")  # a task name in a comment: one line, nothing else
HEADER = """\
# The learning rate each method takes on each backbone when a suite neither sets nor searches one
# (bench/run/searched_lrs.py): what the search of {source} chose, on the most tasks.
# Written by `prefix-bench searched-lrs`; without an entry, the method's default_lr.
"""


@lru_cache(maxsize=4)
def _load(path: Path) -> dict[tuple[str, str], float]:
    if not path.is_file():
        return {}
    doc, out = load_toml(path), {}
    for backbone, table in doc.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{backbone}] must be a table of method = learning rate, got {table!r:.100}")
        for method, lr in table.items():
            if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
                raise ConfigError(f"{path}: {backbone}.{method} = {lr!r:.100} is not a learning rate (a finite "
                                  "number > 0)")
            out[backbone, method] = float(lr)
    return out


def searched_lr(backbone: str, method: str, path: Path | None = None) -> float | None:
    """The committed search's learning rate for ``method`` on ``backbone`` (None: no entry)."""
    return _load(Path(path or SEARCHED_LRS)).get((backbone, method))


def choices(records: list[ResultRecord]) -> dict[tuple[str, str], dict[str, float]]:
    """(backbone, method) -> {task: chosen lr} from the final rows of searched cells. Records
    are untrusted: a backbone or method that is no registrable name (NAME_RULE) is left out,
    so nothing a row holds can write TOML of its own into the file."""
    out: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for r in result_rows(records):
        if not (is_name(r.backbone) and is_name(r.method)):
            continue
        chosen = r.search.get("chosen") if r.status == "ok" and isinstance(r.search, dict) else None
        lr = chosen.get("lr") if isinstance(chosen, dict) else None
        if isinstance(lr, int | float) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0:
            out[r.backbone, r.method][r.task] = float(lr)
    return dict(out)


def pick(per_task: dict[str, float]) -> float:
    """The rate chosen on the most tasks; a tie goes to the smaller rate."""
    counts = Counter(per_task.values())
    return min(counts, key=lambda lr: (-counts[lr], lr))


def render(records: list[ResultRecord], source: str) -> str:
    by_backbone: dict[str, list[str]] = defaultdict(list)
    for (backbone, method), per_task in sorted(choices(records).items()):
        detail = ", ".join(f"{_UNSAFE_TASK.sub('?', t)[:100]}: {lr:g}" for t, lr in sorted(per_task.items()))
        by_backbone[backbone].append(f"{method} = {pick(per_task)!r}  # chose {detail}")
    body = "".join(f'\n["{b}"]\n' + "\n".join(lines) + "\n" for b, lines in sorted(by_backbone.items()))
    return HEADER.format(source=source) + body


def cmd_searched_lrs(args: argparse.Namespace) -> int:
    records, problems = read_records(args.results)
    if problems:
        raise ConfigError(f"{args.results}: {len(problems)} record line(s) do not validate, e.g. {problems[0]}")
    text = render(records, str(args.results))
    if not choices(records):
        raise ConfigError(f"{args.results} holds no final row of a searched cell: nothing was chosen yet")
    out = Path(args.out)
    out.write_text(text, encoding="utf-8")
    _load.cache_clear()
    print(f"wrote {out}")
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("searched-lrs", help="write bench/searched_lrs.toml, each method's learning rate per "
                                            "backbone, from a searched suite's records")
    p.add_argument("--results", default="results/records/standard",
                   help="records folder of a suite with search (default: results/records/standard)")
    p.add_argument("--out", default=str(SEARCHED_LRS), help="output TOML (default: bench/searched_lrs.toml)")
    p.set_defaults(func=cmd_searched_lrs)
