"""Child processes that die with their driver, leave Ctrl-C to it, and leave nothing behind.

A worker the driver started must not outlive it: an orphan keeps a core busy and, without
claims, would write a row the next run also writes. The kernel's parent-death signal stops
it the moment the driver exits, however the driver exits (``kill -9`` included); the run
lock and the once-only append (bench/run/locks.py) cover a worker that escapes even that.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """In a child: have the kernel SIGKILL this process when its parent exits (Linux), and
    exit at once if the parent is already gone (the request would then never fire).

    The "parent" is the thread that started the child: start children from the driver's
    main thread, which lives as long as the driver does."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent_pid:
        os._exit(1)


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while a child is started: the child keeps ignoring it (an ignored signal
    stays ignored across exec, and Python then installs no KeyboardInterrupt handler), so a
    Ctrl-C in the terminal reaches the whole process group but only the driver acts on it and
    stops its children, instead of every child printing a traceback. A Ctrl-C inside this
    window (the few milliseconds of a start) is lost; pressing it again works."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def no_shared_semaphores() -> None:
    """In a child: give tqdm a thread lock instead of the multiprocessing lock it makes by
    default. That lock is a named semaphore registered with the driver's resource tracker; a
    child the driver kills (Ctrl-C, the OOM killer) never unregisters it, and the tracker
    then prints a "leaked semaphore" warning when the driver exits. The child has one
    thread that draws bars, so a thread lock is all tqdm needs."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
