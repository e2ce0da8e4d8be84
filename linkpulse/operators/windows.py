"""Event-time window specs, and the panes every window is built from.

All windows are aligned to the Unix epoch. A *pane* is the finest slice of
time (10 s by default: the gcd of every window's size and step); the
pre-aggregator sums events into panes, tumbling windows merge the panes they
cover, and sliding windows are composed from their panes instead of adding each
event to the 30 or 90 sliding windows it belongs to. Times are float seconds
since the epoch inside the operators; ``MetricWindow`` gets aware UTC datetimes.

>>> w = WindowSpec.parse("5m/10s")
>>> w.name, w.size_s, w.step_s, w.is_sliding
('5m/10s', 300, 10, True)
>>> list(w.starts_containing(600))[:2], len(list(w.starts_containing(600)))
([310, 320], 30)
>>> WindowSpec.parse("1h").start_of(3725.5)
3600
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from typing import Final

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration(text: str) -> int:
    """``"10s"``, ``"5m"``, ``"1h"``, ``"1d"`` -> seconds.

    >>> parse_duration("15m")
    900
    """
    m = _DURATION.match(text)
    if m is None or int(m.group(1)) <= 0:
        msg = f"expected a positive duration like 10s, 5m, 1h or 1d, got {text!r}"
        raise ValueError(msg)
    return int(m.group(1)) * _UNITS[m.group(2)]


def format_duration(seconds: int) -> str:
    """The shortest name for a whole number of seconds (``300`` -> ``"5m"``)."""
    for unit, mult in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % mult == 0:
            return f"{seconds // mult}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class WindowSpec:
    """A tumbling (``step == size``) or sliding window, named as in ``MetricWindow.window``."""

    size_s: int
    step_s: int

    def __post_init__(self) -> None:
        if self.size_s <= 0 or self.step_s <= 0:
            msg = f"window size and step must be positive seconds, got {self.size_s}/{self.step_s}"
            raise ValueError(msg)
        if self.size_s % self.step_s:
            msg = f"window size {self.size_s}s must be a multiple of its step {self.step_s}s"
            raise ValueError(msg)

    @classmethod
    def parse(cls, name: str) -> WindowSpec:
        """``"1m"`` (tumbling) or ``"5m/10s"`` (sliding: size/step)."""
        size, _, step = name.partition("/")
        size_s = parse_duration(size)
        return cls(size_s, parse_duration(step) if step else size_s)

    @property
    def is_sliding(self) -> bool:
        return self.step_s != self.size_s

    @property
    def name(self) -> str:
        size = format_duration(self.size_s)
        return f"{size}/{format_duration(self.step_s)}" if self.is_sliding else size

    def start_of(self, t: float) -> int:
        """Start of the latest window (step grid) that contains ``t``."""
        return int(t // self.step_s) * self.step_s  # `//`, not floor(t / step): exact near 0

    def starts_containing(self, t: float) -> range:
        """Starts of every window ``[s, s + size)`` that contains ``t``, oldest first."""
        last = self.start_of(t)
        return range(last - self.size_s + self.step_s, last + 1, self.step_s)


TUMBLING: Final = tuple(WindowSpec.parse(n) for n in ("1m", "5m", "15m", "1h"))
SLIDING: Final = tuple(WindowSpec.parse(n) for n in ("5m/10s", "15m/10s"))
DEFAULT_WINDOWS: Final = TUMBLING + SLIDING


def pane_size(windows: Iterable[WindowSpec]) -> int:
    """The largest pane that tiles every window: gcd of all sizes and steps.

    >>> pane_size(DEFAULT_WINDOWS)
    10
    """
    sizes = [x for w in windows for x in (w.size_s, w.step_s)]
    if not sizes:
        msg = "at least one window spec is required"
        raise ValueError(msg)
    return reduce(math.gcd, sizes)


def pane_of(t: float, pane_s: int) -> int:
    """Start of the pane containing ``t`` (floor, also for times before 1970).

    >>> pane_of(19.99, 10), pane_of(-0.5, 10)
    (10, -10)
    """
    return int(t // pane_s) * pane_s


def to_datetime(t: float) -> datetime:
    """Seconds since the epoch -> aware UTC datetime."""
    return datetime.fromtimestamp(t, UTC)


def to_seconds(dt: datetime) -> float:
    """Aware datetime -> seconds since the epoch; naive datetimes are refused."""
    if dt.tzinfo is None:
        msg = f"expected an aware datetime (UTC), got naive {dt.isoformat()}"
        raise ValueError(msg)
    return dt.timestamp()
