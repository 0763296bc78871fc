"""Flat result records: one JSON line per cell, appended to ``records.jsonl``.

Appends are atomic for readers and safe with several writers: each record is one
``os.write`` of a whole line on an ``O_APPEND`` descriptor, under an exclusive ``flock``,
followed by ``fsync``. A line torn by a crash in an older version is reported by
``read_records`` and skipped, never fatal.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from bench.core.record import ResultRecord
from bench.core.record_check import RecordError, parse_row

RECORDS_FILE = "records.jsonl"


def append_record(results_dir: str | Path, record: ResultRecord, *, once: bool = False) -> Path | None:
    """Append ``record`` as one line. With ``once``, write nothing (and return None) when the
    cell is already finished on the record's data (:func:`finished_row`), checked under the
    lock: a worker orphaned by a dead driver and the worker of the next run cannot both
    record one cell."""
    path = Path(results_dir) / RECORDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (record.to_json() + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if once and finished_row(read_records(results_dir)[0], record.cell_id, record.data_fingerprint or None):
            return None
        # a file whose last line was torn by a crash gets a newline first, so the new
        # record starts on a line of its own
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return path


def read_records(results_dir: str | Path) -> tuple[list[ResultRecord], list[str]]:
    """All records that fit the schema (older schemas migrated), and a "PATH:LINE: reason"
    for every other line (torn by a crash, edited, or from a hostile file: bench/core/record_check.py
    checks every field). A record of a newer schema raises ConfigError naming file:line."""
    path = Path(results_dir) / RECORDS_FILE
    if not path.is_file():
        return [], []
    records, problems = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as err:  # JSONDecodeError; a 5000-digit int; [[[...]]]
                problems.append(f"{path}:{i}: unreadable line skipped ({err.__class__.__name__}: "
                                f"{str(err)[:80]}); a crash may have torn it")
                continue
            try:
                records.append(parse_row(row, f"{path}:{i}"))
            except RecordError as err:
                problems.append(f"{path}:{i}: row does not fit the record schema: {err}")
    return records, problems


def result_rows(records: list[ResultRecord]) -> list[ResultRecord]:
    """The rows that are results: a search trial's row (``role`` "trial") only chose a
    learning rate, scored on a held-out slice of the training split, so no table,
    leaderboard or report shows it. It stays in the store so a resumed run skips it."""
    return [r for r in records if r.role != "trial"]


def latest_by_cell(records: list[ResultRecord]) -> dict[str, ResultRecord]:
    """The newest record of each cell (a retried cell has several)."""
    out: dict[str, ResultRecord] = {}
    for r in records:
        out[r.cell_id] = r
    return out


def finished_row(records: list[ResultRecord], cell_id: str, data_fingerprint: str | None) -> ResultRecord | None:
    """The row that makes a cell finished, as bench/run/staleness.py counts it: its newest row,
    when that is ``ok`` and was computed on ``data_fingerprint`` (None: on any data). A
    finished cell is neither run nor recorded again."""
    newest = next((r for r in reversed(records) if r.cell_id == cell_id), None)
    if newest is None or newest.status != "ok":
        return None
    return newest if data_fingerprint is None or newest.data_fingerprint == data_fingerprint else None


def finished_ids(records: list[ResultRecord]) -> set[str]:
    return {cid for cid, r in latest_by_cell(records).items() if r.status == "ok"}


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` by ``data`` so that no reader and no crash ever sees part of it: a
    temporary file unique to this process beside it, fsynced, then renamed over it (rename
    is atomic on POSIX; two writers of one path never share the temporary file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
