"""Validate a file of events (NDJSON, a JSON array, or one JSON event) line by line.

Used by ``linkpulse schema validate``: every bad event is reported with the
line it starts on, the field at fault and the problem, so a producer can fix
its output without guessing.

>>> report = check_document(b'{"type": "page_view"}\\n\\nnot json\\n')
>>> [(f.line, f.field) for f in report.findings]
[(1, 'event_id'), (3, '$')]
>>> report.total, report.valid
(2, 0)
"""

from __future__ import annotations

import re
from datetime import datetime

import msgspec

from linkpulse.errors import SchemaValidationError
from linkpulse.schemas.codec import decode_event
from linkpulse.schemas.jsonarray import split_array

__all__ = ["FileReport", "Finding", "check_document"]

_BYTE_OFFSET = re.compile(r"\(byte (\d+)\)")
TOO_DEEP = "JSON nested too deeply"


class Finding(msgspec.Struct, frozen=True):
    """One invalid event: where it starts (1-based line, 0-based item index) and why."""

    line: int
    index: int
    field: str
    problem: str


class FileReport(msgspec.Struct):
    """The outcome of checking one document."""

    format: str
    total: int = 0
    findings: list[Finding] = msgspec.field(default_factory=list)

    @property
    def valid(self) -> int:
        """How many events passed."""
        return self.total - len(self.findings)


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _check(report: FileReport, raw: bytes, line: int, index: int, now: datetime | None) -> None:
    report.total += 1
    try:
        decode_event(raw, now=now)
    except SchemaValidationError as e:
        report.findings.append(Finding(line, index, e.field, e.problem))
    except RecursionError:  # decode_event lets msgspec's depth limit out
        report.findings.append(Finding(line, index, "$", TOO_DEEP))


def _check_array(data: bytes, now: datetime | None) -> FileReport:
    report = FileReport(format="json-array")
    try:
        items = split_array(data)  # a malformed or too deep item is only that item's problem
    except SchemaValidationError as e:
        # The array itself is unreadable: one finding where the scan stopped.
        m = _BYTE_OFFSET.search(e.problem)
        line = _line_of(data, int(m[1])) if m else 1
        report.findings.append(Finding(line, 0, e.field, f"JSON array: {e.problem}"))
        report.total = 1
        return report
    pos = 0
    for index, raw in enumerate(items):
        # Items are consecutive slices of `data`: the first match after the
        # previous item is this one (only whitespace and a comma lie between).
        start = data.find(raw, pos)
        pos = start + len(raw)
        _check(report, raw, _line_of(data, start), index, now)
    return report


def _check_lines(data: bytes, now: datetime | None) -> FileReport:
    report = FileReport(format="ndjson")
    index = 0
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            _check(report, line.strip(), number, index, now)
            index += 1
    return report


def check_document(data: bytes, *, now: datetime | None = None) -> FileReport:
    """Check every event of ``data``; ``now`` enables the future-timestamp check."""
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark some editors add
        data = data[3:]
    stripped = data.lstrip()
    if stripped.startswith(b"["):
        return _check_array(data, now)
    if stripped.startswith(b"{") and b"\n" in stripped.strip():
        # One pretty-printed event spans lines; NDJSON would see broken lines.
        try:
            msgspec.json.decode(data)
        except (msgspec.DecodeError, RecursionError):
            pass
        else:
            report = FileReport(format="json-object")
            _check(report, data.strip(), _line_of(data, len(data) - len(stripped)), 0, now)
            return report
    return _check_lines(data, now)
