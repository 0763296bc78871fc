"""A records file whose last line a crash tore (disk full, power loss, ``kill -9`` of an
older version mid-write) is repaired when the next run starts.

Every row is written as one whole line ending in a newline (bench/core/records.py), so a file
that does not end in a newline ends in a torn row. Its bytes are copied aside to
``records.jsonl.torn-<UTC time>`` (nothing is thrown away) and the file is cut back to its
last whole row, under the same lock the writers take, so the next append starts on a line
of its own and no reader meets the fragment again. A last line that is a whole JSON object
merely missing its newline (an edited file) is kept and given its newline instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from bench.core.records import RECORDS_FILE, write_atomic

_CHUNK = 1 << 16


def _last_newline(fd: int, size: int) -> int:
    """Offset of the last b"\\n" in the file, or -1; reads backwards, so a large file with a
    short torn tail costs one chunk."""
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        chunk = os.pread(fd, end - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i
        end = start
    return -1


def _aside_path(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside, n = path.with_name(f"{path.name}.torn-{stamp}"), 1
    while aside.exists():  # two repairs in one second: keep both fragments
        aside, n = path.with_name(f"{path.name}.torn-{stamp}-{n}"), n + 1
    return aside


def _is_whole_row(tail: bytes) -> bool:
    try:
        return isinstance(json.loads(tail), dict)
    except (ValueError, RecursionError):
        return False


def set_aside_torn_tail(results_dir: str | Path) -> str | None:
    """Repair ``results_dir/records.jsonl`` if its last line is torn; returns the one line
    that says what was done, or None when the file is whole (or absent)."""
    path = Path(results_dir) / RECORDS_FILE
    try:
        fd = os.open(path, os.O_RDWR)
    except (FileNotFoundError, IsADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # writers hold it for each whole-row append
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return None
        cut = _last_newline(fd, size) + 1
        tail = os.pread(fd, size - cut, cut)
        if _is_whole_row(tail):
            os.pwrite(fd, b"\n", size)
            os.fsync(fd)
            return f"records: the last row of {path} had no newline; added one"
        aside = write_atomic(_aside_path(path), tail)
        os.ftruncate(fd, cut)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return (f"records: the last line of {path} was torn by a crash ({len(tail)} bytes, not a whole row); "
            f"moved it to {aside} and cut the file back to its last whole row")
