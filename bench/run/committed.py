"""A suite's committed records (results/records/SUITE/) and its working records folder
(results/runs/SUITE/), kept in step in both directions.

A long suite (the standard one) outlives a session and its machine: what the working folder
holds is lost with them (it is ignored by git), what is committed is not. ``publish`` copies the
working folder's finished rows into the committed one as the run goes; ``adopt`` seeds a fresh
working folder from the committed rows, so the next run resumes where the last checkpoint
left off instead of training every cell again. Both add and never remove: a row is a line,
copied when the other side lacks it, in the order it was written; a line still being written
(no newline yet) is left for the next call. Curves and sample outputs, one file per cell, are
copied where the other side has no file of that name.

Standard library only (and bench.core's stdlib-only name rule): nox calls it (``python -m bench.run.committed``) before the project's
own dependencies matter.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sys
from pathlib import Path

from bench.core.safe_names import NAME_RULE, is_name

RECORDS_FILE = "records.jsonl"
# what of a records folder is committed: the rows, their curves and E2E sample outputs; never
# the trained adapters (hundreds of MB)
PER_CELL_FOLDERS = ("curves", "samples")


def _complete_lines(path: Path) -> list[bytes]:
    """The file's lines that end in a newline, read under the writers' lock
    (bench.core.records.append_record appends under it)."""
    if not path.is_file():
        return []
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return [line + b"\n" for line in data.split(b"\n")[:-1] if line.strip()]


def merge_records(src: Path, dst: Path) -> int:
    """Append to ``dst``/records.jsonl every complete line of ``src``/records.jsonl it lacks, in
    ``src``'s order; the number appended. ``dst``'s own lines stay first and untouched."""
    new = _complete_lines(src / RECORDS_FILE)
    if not new:
        return 0
    target = dst / RECORDS_FILE
    have = set(_complete_lines(target))
    missing = [line for line in new if line not in have]
    if not missing:
        return 0
    dst.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size:  # a torn last line (an older crash) must not swallow the first new one
            with open(target, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    os.write(fd, b"\n")
        os.write(fd, b"".join(missing))
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return len(missing)


def merge_files(src: Path, dst: Path) -> int:
    """Copy each file of ``src``'s per-cell folders that ``dst`` lacks; the number copied.
    Only plain files one level down, under their own names: nothing else is ours."""
    copied = 0
    for folder in PER_CELL_FOLDERS:
        if not (src / folder).is_dir():
            continue
        for f in sorted((src / folder).iterdir()):
            out = dst / folder / f.name
            if f.is_symlink() or not f.is_file() or out.exists():
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out)
            copied += 1
    return copied


def sync(src: Path, dst: Path) -> tuple[int, int]:
    """(rows appended, files copied) from ``src`` into ``dst``."""
    return merge_records(Path(src), Path(dst)), merge_files(Path(src), Path(dst))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run.committed", description=__doc__.split("\n\n")[0])
    p.add_argument("direction", choices=["publish", "adopt"],
                   help="publish: working -> committed records; adopt: committed -> working records")
    p.add_argument("suite", help="suite name (results/runs/SUITE, results/records/SUITE)")
    p.add_argument("--root", default=".", help="the checkout (default: the current folder)")
    args = p.parse_args(argv)
    if not is_name(args.suite):
        p.error(f"suite {args.suite!r} is not a name ({NAME_RULE})")
    runs = Path(args.root) / "results" / "runs" / args.suite
    kept = Path(args.root) / "results" / "records" / args.suite
    src, dst = (runs, kept) if args.direction == "publish" else (kept, runs)
    rows, files = sync(src, dst)
    print(f"{args.direction} {args.suite}: {rows} row(s), {files} file(s) {src} -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
