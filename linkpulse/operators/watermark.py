"""Event-time watermark for one partition, with an idle advance from the clock.

The watermark is ``max event time seen - allowed lateness``. When no newer
event has arrived for ``idle_timeout_s`` of wall-clock time, it keeps moving
forward with the clock, so windows still close when traffic stops. It never
goes back. All times are float seconds since the epoch; ``now`` comes from the
caller's injected clock, so tests drive it by hand.

>>> wm = Watermark(allowed_lateness_s=10, idle_timeout_s=5)
>>> wm.current(now=1000.0)
-inf
>>> wm.observe(500.0, now=1000.0)
490.0
>>> wm.current(now=1004.0), wm.current(now=1008.0)
(490.0, 493.0)
>>> wm.observe(495.0, now=1008.0)  # an older event does not pull it back
493.0
"""

from __future__ import annotations

import math
from typing import Any


class Watermark:
    """Monotone watermark: max event time - lateness, plus idle advance."""

    __slots__ = ("_last_at", "_max_event", "_wm", "allowed_lateness_s", "idle_timeout_s")

    def __init__(
        self,
        allowed_lateness_s: float = 10.0,
        idle_timeout_s: float | None = 5.0,
        state: dict[str, Any] | None = None,
    ) -> None:
        if allowed_lateness_s < 0:
            msg = f"allowed_lateness_s must be >= 0, got {allowed_lateness_s}"
            raise ValueError(msg)
        if idle_timeout_s is not None and idle_timeout_s < 0:
            msg = f"idle_timeout_s must be >= 0 or None (no idle advance), got {idle_timeout_s}"
            raise ValueError(msg)
        self.allowed_lateness_s = allowed_lateness_s
        self.idle_timeout_s = idle_timeout_s
        self._max_event = -math.inf
        self._last_at = -math.inf  # wall-clock time the max last grew
        self._wm = -math.inf
        if state is not None:
            self._max_event = float(state["max_event"])
            self._last_at = float(state["last_at"])
            self._wm = float(state["wm"])

    @property
    def max_event(self) -> float:
        """The newest event time seen (``-inf`` before any)."""
        return self._max_event

    def current(self, now: float) -> float:
        """The watermark at wall-clock time ``now``."""
        base = self._max_event - self.allowed_lateness_s
        if self.idle_timeout_s is not None:
            idle = now - self._last_at - self.idle_timeout_s
            if idle > 0:
                base += idle
        return base if base > self._wm else self._wm

    def observe(self, event_time: float, now: float) -> float:
        """Take the newest event time of a batch into account; returns the new watermark."""
        wm = self.current(now)
        self._wm = wm  # freeze any idle advance so it is never undone
        if event_time > self._max_event:
            self._max_event = event_time
            self._last_at = now
            wm = self.current(now)
            self._wm = wm
        return wm

    def when_reaches(self, target: float, now: float) -> float | None:
        """Wall-clock time at which the watermark reaches ``target`` without new events.

        ``None`` if it never will (no idle advance configured, or no event seen yet).
        """
        if self.current(now) >= target:
            return now
        if self.idle_timeout_s is None or self._max_event == -math.inf:
            return None
        base = self._max_event - self.allowed_lateness_s
        # once idle, current(t) = max_event - lateness + (t - last_at - idle) (when above _wm)
        return max(now, self._last_at + self.idle_timeout_s + target - base)

    def snapshot(self) -> dict[str, Any]:
        """Picklable state; pass it back as ``Watermark(..., state=...)``."""
        return {"max_event": self._max_event, "last_at": self._last_at, "wm": self._wm}
