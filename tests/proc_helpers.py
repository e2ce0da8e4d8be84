"""Waiting on a condition, for the tests of the flow's helper processes.

(Whether a process is alive: ``linkpulse.stack.process.is_alive``.)
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(check: Callable[[], bool], timeout: float = 20, poll_s: float = 0.02) -> bool:
    """Whether ``check()`` came true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True
