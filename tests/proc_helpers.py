"""Waiting on conditions and processes, for the tests of the flow's helper processes."""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil


def alive(pid_or_proc: int | psutil.Process) -> bool:
    """Running, and not a zombie waiting for its parent (or init) to reap it."""
    try:
        proc = (
            pid_or_proc if isinstance(pid_or_proc, psutil.Process) else psutil.Process(pid_or_proc)
        )
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def wait_until(check: Callable[[], bool], timeout: float = 20, poll_s: float = 0.02) -> bool:
    """Whether ``check()`` came true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True
