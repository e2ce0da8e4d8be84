"""Durations in rule and policy files: ``0``, ``30s``, ``5m``, ``1h30m``, ``2d`` or seconds.

>>> parse_duration("1h30m"), parse_duration("0"), parse_duration(90)
(5400.0, 0.0, 90.0)
>>> parse_duration("soon")
Traceback (most recent call last):
...
ValueError: expected a duration like 0, 30s, 5m, 1h30m or 2d, got 'soon'
"""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: object) -> float:
    """Seconds (>= 0) from a duration text or a plain number of seconds."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int | float):
        if value >= 0:
            return float(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return float(text)
        if text and re.fullmatch(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+", text):
            return sum(float(n) * _UNIT[u] for n, u in _PART.findall(text))
    msg = f"expected a duration like 0, 30s, 5m, 1h30m or 2d, got {value!r}"
    raise ValueError(msg)


def format_duration(seconds: float) -> str:
    """The shortest text for ``seconds`` (``300`` -> ``"5m"``, ``90`` -> ``"1m30s"``).

    >>> format_duration(300), format_duration(90), format_duration(0)
    ('5m', '1m30s', '0s')
    """
    s = round(seconds)
    if s == 0:
        return "0s"
    out = []
    for unit, mult in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= mult:
            out.append(f"{s // mult}{unit}")
            s %= mult
    return "".join(out)
