"""A calendar queue of future events, bucketed by whole simulated second.

A binary heap costs a Python-level tuple comparison per level on every push and
pop; at ~100k pending events that was the generator's biggest cost. Here a push
is an append to its second's list, and a second is sorted once (in C) when no
new event can fall into it any more.

>>> s = Schedule()
>>> s.push(2.5, "c"); s.push(1.7, "b"); s.push(1.2, "a")
>>> [ev for _, _, ev in s.pop_bucket_before(2.0)], s.pop_bucket_before(2.0)
(['a', 'b'], None)
>>> len(s)
1
"""

from __future__ import annotations

import heapq
import math
from typing import Generic, TypeVar

T = TypeVar("T")


class Schedule(Generic[T]):
    """Items keyed by time; pop whole seconds in time order (ties by push order)."""

    __slots__ = ("_buckets", "_keys", "_seq")

    def __init__(self) -> None:
        self._buckets: dict[int, list[tuple[float, int, T]]] = {}
        self._keys: list[int] = []  # heap of the seconds that have a bucket
        self._seq = 0

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def push(self, t: float, item: T) -> None:
        """Schedule ``item`` at time ``t`` (Unix seconds)."""
        self._seq += 1
        key = int(t) if t >= 0 else math.floor(t)  # int() is floor for the usual t >= 0
        try:
            self._buckets[key].append((t, self._seq, item))
        except KeyError:
            self._buckets[key] = [(t, self._seq, item)]
            heapq.heappush(self._keys, key)

    def pop_bucket_before(self, horizon: float) -> list[tuple[float, int, T]] | None:
        """The earliest second starting before ``horizon``, sorted; None if there is none.

        Only seconds that end at or before the last time anything can still be
        pushed at are complete; the caller passes that time as ``horizon`` rounded down.
        """
        keys = self._keys
        if not keys or keys[0] >= horizon:
            return None
        items = self._buckets.pop(heapq.heappop(keys))
        items.sort()
        return items
