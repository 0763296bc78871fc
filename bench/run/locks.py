"""Claims: who owns a cell right now, kept in the results folder, so that two drivers on one
folder, or a new driver and a worker its dead predecessor left behind, never run a cell twice.

Two locks per cell, each an exclusive ``flock`` on a file under ``RESULTS/claims/``:

- ``<cell_id>``, the *driver's claim*: taken just before the cell is dispatched, held until
  its row is in the store. A second driver that finds it held skips the cell ("running
  elsewhere") and looks at it again once its own cells are done.
- ``<cell_id>.running``, the *run lock*: held by the process that computes the cell (the
  driver itself, its child, a Ray or Slurm worker) for the cell's whole life. A worker waits
  for it and then re-reads the store, so a worker outliving its driver (a Slurm job does by
  design) makes a later run of the same cell wait and reuse its row instead of training twice.

Both are taken before the store is re-read: whoever gets the lock second sees the row of
whoever had it first, because rows are appended and fsynced before a lock is released.

Why ``flock``: the kernel drops a lock when its holder exits, however it exits, so on one
host a claim can never go stale and no guess about a pid's liveness is needed. The file's
content (pid, host, boot id, process start time) names the holder in messages, and is a
second check: taking a lock on a file whose holder still runs on this host means the
filesystem ignores ``flock``, and the cell counts as held.

Shared filesystems (Ray and Slurm across nodes): Linux NFS clients (v3 with lockd, v4)
turn ``flock`` into whole-file locks that every client sees, and release a crashed client's
locks when its lease runs out (NFSv4: about 90 s; until then its cells count as running
elsewhere). Lustre needs the ``flock`` mount option (``localflock`` keeps locks on one node,
which lets two nodes run one cell), BeeGFS its global file locks, GPFS works as is. The
records file relies on the same locks for its appends, and is the last line of defence: a row
is appended only while the cell is not finished on its data (``append_record(once=True)``),
so where locks do not reach across nodes a cell can be computed twice but is never recorded
twice.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from bench.core.records import ResultRecord, finished_row, read_records

if TYPE_CHECKING:
    from bench.run.matrix import Cell

CLAIMS_DIR = "claims"
RUNNING_SUFFIX = ".running"
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # a claim's file name is the cell id: no paths
_BROKEN_LOCK_POLL_S = 1.0


@lru_cache(maxsize=1)
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22):
    a reused pid has another. None when no such process runs (a zombie has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and ')'
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Holder:
    """Who holds a claim; written into the claim file once the lock is taken."""

    pid: int
    host: str
    boot_id: str
    start_ticks: int | None
    since: str
    role: str

    @classmethod
    def me(cls, role: str) -> Holder:
        since = datetime.now(UTC).isoformat(timespec="seconds")
        return cls(os.getpid(), socket.gethostname(), _boot_id(), _start_ticks(os.getpid()), since, role)

    def describe(self) -> str:
        return f"{self.role} pid {self.pid} on {self.host} since {self.since}"

    def alive_here(self) -> bool:
        """This holder still runs on this host (same boot, same pid and start time); False
        when it has exited or when that cannot be told (another host)."""
        if not self.boot_id or self.boot_id != _boot_id() or self.host != socket.gethostname():
            return False
        return self.start_ticks is not None and _start_ticks(self.pid) == self.start_ticks


def _read_holder(fd: int) -> Holder | None:
    try:
        return Holder(**json.loads(os.pread(fd, 4096, 0)))
    except (OSError, ValueError, TypeError):
        return None  # empty (a holder died before writing) or not ours: no holder to respect


class Claim:
    """An exclusive lock on one claim file. ``release`` removes the file while still holding
    the lock, so a waiter that opened the old file notices (another inode) and starts over."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder: the file stays, its lock still goes with the close
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_path(results_dir: str | Path, cell_id: str, suffix: str = "") -> Path:
    if not _SAFE_ID.fullmatch(cell_id):
        raise ValueError(f"cell id {cell_id!r} is not a safe file name")
    return Path(results_dir) / CLAIMS_DIR / f"{cell_id}{suffix}"


def _acquire(path: Path, role: str, blocking: bool) -> Claim | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if not current:  # the holder released (unlinked) it between our open and our lock
            os.close(fd)
            continue
        previous = _read_holder(fd)
        if previous is not None and previous.pid != os.getpid() and previous.alive_here():
            os.close(fd)  # flock is not enforced here: respect the live holder's file instead
            if not blocking:
                return None
            time.sleep(_BROKEN_LOCK_POLL_S)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(Holder.me(role))).encode(), 0)
        return Claim(path, fd)


def try_claim(results_dir: str | Path, cell_id: str) -> Claim | None:
    """The driver's claim on a cell, or None when another live process holds it."""
    return _acquire(claim_path(results_dir, cell_id), "driver", blocking=False)


def run_lock(results_dir: str | Path, cell_id: str) -> Claim:
    """The run lock of a cell, waiting while another process computes it."""
    return _acquire(claim_path(results_dir, cell_id, RUNNING_SUFFIX), "worker", blocking=True)


def holder_of(results_dir: str | Path, cell_id: str, suffix: str = "") -> Holder | None:
    """Who the claim file names (for messages; the lock, not the file, decides)."""
    try:
        fd = os.open(claim_path(results_dir, cell_id, suffix), os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_holder(fd)
    finally:
        os.close(fd)


def stored_finished_row(results_dir: str | Path, cell_id: str, data_fingerprint: str | None) -> ResultRecord | None:
    """The row that makes the cell finished on this data, read from the store now."""
    return finished_row(read_records(results_dir)[0], cell_id, data_fingerprint)


def cell_label(cell: Cell) -> str:
    return f"{cell.method} {cell.task} {cell.backbone} P={cell.prefix_length} seed={cell.seed}"


@dataclass
class DriverClaims:
    """The claims one driver holds. ``take`` claims each cell as the executor asks for it
    (so two drivers share a matrix cell by cell instead of one taking it all), re-reads the
    store under the claim, and sets aside cells another live process holds."""

    results_dir: Path
    log: Callable[[str], None]
    data_fingerprints: Mapping[str, str]  # cell id -> the data it reads, as the driver read it
    held: dict[str, Claim] = field(default_factory=dict)
    elsewhere: list[Cell] = field(default_factory=list)

    def take(self, cells: Iterable[Cell], last_look: bool = False) -> Iterator[Cell]:
        for cell in cells:
            claim = try_claim(self.results_dir, cell.id)
            if claim is None:
                who = holder_of(self.results_dir, cell.id)
                self.elsewhere.append(cell)
                then = "left to that run" if last_look else "checked again at the end"
                self.log(f"{cell_label(cell)}: running elsewhere "
                         f"({who.describe() if who else 'holder unknown'}); {then}")
                continue
            if stored_finished_row(self.results_dir, cell.id, self.data_fingerprints.get(cell.id)):
                claim.release()
                self.log(f"{cell_label(cell)}: finished elsewhere meanwhile, not run again")
                continue
            self.held[cell.id] = claim
            yield cell

    def release(self, cell_id: str) -> None:
        claim = self.held.pop(cell_id, None)
        if claim is not None:
            claim.release()

    def release_all(self) -> None:
        for cell_id in list(self.held):
            self.release(cell_id)

    def recheck(self) -> list[Cell]:
        """The cells set aside as running elsewhere, for one more ``take``: it runs those
        whose holder let go without finishing them and skips the finished ones."""
        again, self.elsewhere = self.elsewhere, []
        return again


def check_writable(results_dir: str | Path) -> None:
    """Raise OSError unless rows, claims, adapters and curves can be written under
    ``results_dir``: checked before any cell trains, not found out after the first has."""
    import tempfile

    from bench.core.records import RECORDS_FILE

    root = Path(results_dir)
    (root / CLAIMS_DIR).mkdir(parents=True, exist_ok=True)
    folders = [root] + [root / name for name in (CLAIMS_DIR, "adapters", "curves", "samples")
                        if (root / name).is_dir()]
    for folder in folders:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    if (root / RECORDS_FILE).exists():  # a read-only records file in a writable folder
        os.close(os.open(root / RECORDS_FILE, os.O_WRONLY | os.O_APPEND))
