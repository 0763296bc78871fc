"""A records.jsonl row checked against ResultRecord's declared field types.

Records are untrusted input: ``run`` resumes from them, ``render``, ``compare`` and
``reproduce`` read them, and a results folder may come from anyone. A row is used only if
it is a JSON object whose every known field has its declared type: a list where an object
belongs, a string where a number belongs, ``NaN`` or ``Infinity`` where a finite number
belongs, an integer pandas cannot hold, a negative count: each makes the row unusable,
and :func:`parse_row` says which field and why. Older schemas are migrated first
(bench/core/record_schema.py; an unknown ``schema_version`` is refused there, naming
file:line: a ConfigError, exit 2, not a skipped row); unknown keys are ignored, missing optional fields take their defaults, missing identity fields are
errors. Callers skip bad rows and say so in one line (:func:`problem_summary`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any

from bench.core.record import ResultRecord
from bench.core.record_schema import upgrade

INT_LIMIT = 2**63  # pandas holds integers as int64; a larger one becomes an object column
# Measurements that may be undefined (a Pearson correlation of constant predictions, a
# loss that went NaN): NaN is allowed there and renders as a gap. Infinity is nowhere.
NAN_ALLOWED = frozenset({"main_score", "first_loss", "final_loss", "mfu", "harness_overhead", "metrics",
                         "holdout_score"})
# Numbers that are legitimately negative; every other number (counts, bytes, seconds,
# rates, the learning rate) must be >= 0.
SIGNED = frozenset({"main_score", "first_loss", "final_loss", "seed", "metrics", "holdout_score"})


class RecordError(ValueError):
    """A row does not fit the record schema; the message names the field."""


def _number(name: str, value: Any, integer: bool) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise RecordError(f"field {name!r} is {_shown(value)}, expected {'an integer' if integer else 'a number'}")
    if integer and not -INT_LIMIT <= value < INT_LIMIT:
        raise RecordError(f"field {name!r} is {_shown(value)}, outside the 64-bit integer range")
    if isinstance(value, float) and not math.isfinite(value) and not (math.isnan(value) and name in NAN_ALLOWED):
        raise RecordError(f"field {name!r} is {value!r}, expected a finite number")
    if name not in SIGNED and value < 0:
        raise RecordError(f"field {name!r} is {_shown(value)}, expected a number >= 0")
    return value if integer else float(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _check(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check(name, value, args[0])
    if tp is str:
        if not isinstance(value, str):
            raise RecordError(f"field {name!r} is {_shown(value)}, expected a string")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecordError(f"field {name!r} is {_shown(value)}, expected true or false")
        return value
    if tp is int or tp is float:
        return _number(name, value, tp is int)
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"field {name!r} is {_shown(value)}, expected an object")
        inner = typing.get_args(tp)[1]
        if inner is Any:
            return value
        return {k: _check(name, v, inner) for k, v in value.items()}
    raise TypeError(f"record_check: no rule for field {name!r} of type {tp!r}")  # a new field type: add a rule


_HINTS = typing.get_type_hints(ResultRecord)
_FIELDS = [f for f in dataclasses.fields(ResultRecord) if f.init]
REQUIRED = tuple(f.name for f in _FIELDS
                 if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def parse_row(row: Any, where: str) -> ResultRecord:
    """The record a decoded JSON line describes, migrated to the current schema; RecordError
    naming the first bad field. ``where`` ("file:line") names the row when its schema is
    newer than this code reads (a ConfigError from bench/record_schema.upgrade)."""
    if not isinstance(row, dict):
        raise RecordError(f"expected a JSON object, got {_shown(row)}")
    # a version this code does not know refuses the whole file (record_schema.upgrade says
    # why); skipping such rows would make `run` redo cells a newer version finished
    row = upgrade(row, where)
    missing = [n for n in REQUIRED if n not in row]
    if missing:
        raise RecordError(f"missing field(s) {', '.join(missing)}")
    values = {f.name: _check(f.name, row[f.name], _HINTS[f.name]) for f in _FIELDS if f.name in row}
    if values["prefix_length"] is not None and values["prefix_length"] < 1:
        raise RecordError(f"field 'prefix_length' is {values['prefix_length']}, expected null or >= 1")
    return ResultRecord.from_dict(values)


_PROBLEM = re.compile(r"^(?P<path>.*):(?P<line>\d+): (?P<reason>.*)$", re.S)
SHOWN_REASONS = 3
SHOWN_LINES = 20


def problem_summary(problems: list[str]) -> str:
    """One warning line for the unusable rows ``read_records`` reported (each
    "PATH:LINE: reason"): how many, in which file, which lines, and the first reasons."""
    parsed = [m.groupdict() for m in map(_PROBLEM.match, problems) if m]
    if len(parsed) != len(problems):  # not in read_records' format: show them as they are
        return f"warning: {len(problems)} unusable record row(s) skipped: " + "; ".join(problems[:SHOWN_REASONS])
    paths = sorted({p["path"] for p in parsed})
    lines = [p["line"] for p in parsed]
    shown = ", ".join(lines[:SHOWN_LINES]) + (", ..." if len(lines) > SHOWN_LINES else "")
    reasons = "; ".join(f"line {p['line']}: {p['reason']}" for p in parsed[:SHOWN_REASONS])
    more = f"; and {len(parsed) - SHOWN_REASONS} more" if len(parsed) > SHOWN_REASONS else ""
    return (f"warning: skipped {len(parsed)} unusable row(s) of {', '.join(paths)} (line(s) {shown}): "
            f"{reasons}{more}; the other rows are used")
