"""Decode, validate and encode events; every failure is a SchemaValidationError.

Decoding never raises anything else, whatever the bytes: callers route the
error (with its ``field`` and ``problem``) to the dead letters and go on.

>>> raw = encode_event(PageView(event_id="e1", tenant="acme",
...     event_time=datetime(2026, 11, 24, tzinfo=UTC), properties={"page": "home"}))
>>> decode_event(raw).event_id
'e1'
>>> decode_event(b'{"type": "page_view"')
Traceback (most recent call last):
...
linkpulse.errors.SchemaValidationError: $: malformed JSON: Input data was truncated
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from linkpulse.errors import SchemaValidationError
from linkpulse.schemas.events import (
    CURRENCY_PATTERN,
    ENTITY_ID_PATTERN,
    EVENT_ID_PATTERN,
    EVENT_TYPES,
    PROPERTY_RULES,
    TENANT_PATTERN,
    BaseEvent,
    Event,
    PageView,
)
from linkpulse.schemas.jsonarray import split_array

__all__ = [
    "MAX_FUTURE_SKEW",
    "MIN_EVENT_TIME",
    "decode_event",
    "encode_event",
    "split_batch",
    "validate_event",
    "PageView",
]

MAX_FUTURE_SKEW = timedelta(minutes=5)
# The earliest event_time accepted, everywhere (API, dataflow, backfill, `schema
# validate`). A fixed instant, not "now minus a horizon", so an event's verdict
# never changes with the day it is checked or replayed; older than any
# marketplace activity linkpulse can be fed, and it catches the usual producer
# bugs: zero values (0001-01-01), the Unix epoch, seconds read as milliseconds.
MIN_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
# Names and values echoed in a reason are cut to this many characters: an
# unknown 1 MB key must not make a 1 MB reason (nor a dead letter over the
# broker's message size limit).
MAX_ECHO = 120

_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()
_NUL = "a NUL character (\\u0000)"
_LOCATION = re.compile(r"^(?P<problem>.*?)(?: - at `(?:key` in `)?\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")


def _clip(text: str) -> str:
    """``text``, or its start and how long it was when longer than MAX_ECHO.

    >>> _clip("k" * 200)[-24:]
    'kkkk... (200 characters)'
    """
    return text if len(text) <= MAX_ECHO else f"{text[:MAX_ECHO]}... ({len(text)} characters)"


def _field_from(exc: msgspec.ValidationError) -> SchemaValidationError:
    """Turn msgspec's 'Problem - at `$.a.b`' into (field 'a.b', problem)."""
    m = _LOCATION.match(str(exc))
    problem = m["problem"] if m else str(exc)
    path = (m["path"] or "") if m else ""
    field = path.lstrip(".")
    missing = _MISSING.search(problem)
    if missing:
        field = f"{field}.{missing['name']}" if field else missing["name"]
    if problem.startswith("Invalid value") and field == "type":
        problem = f"{problem}; expected one of {', '.join(EVENT_TYPES)}"
    if problem.startswith("Object contains unknown field"):
        unknown = re.search(r"`([^`]+)`", problem)
        if unknown:
            name = _clip(unknown[1])
            field = f"{field}.{name}" if field else name
            problem = (
                f"Object contains unknown field `{name}`; put extra details under `properties`"
            )
    return SchemaValidationError(field or "$", problem)


class _Format:
    """A string format checked after decoding, in msgspec's wording.

    Matched with ``fullmatch``, as JSON Schema's ``$`` means: with ``re.search``
    (msgspec's way) ``$`` also matches before a trailing newline, which let
    ``"acme\\n"`` through as a tenant (and into a NATS subject).

    Values found valid are remembered, up to ``limit`` of them (then the
    memory starts over): tenants, users, sellers and currencies repeat, and a
    set lookup is ~20x cheaper than the regex.

    >>> _Format(r"^[A-Z]{3}$").check("currency", "usd")
    Traceback (most recent call last):
    ...
    linkpulse.errors.SchemaValidationError: currency: Expected `str` matching regex '^[A-Z]{3}$'
    """

    __slots__ = ("_limit", "_problem", "_match", "seen")

    def __init__(self, pattern: str, limit: int = 100_000) -> None:
        self._match = re.compile(pattern).fullmatch
        self._problem = f"Expected `str` matching regex {pattern!r}"
        self.seen: set[str] = set()  # the hot path tests membership itself, inline
        self._limit = limit

    def check(self, field: str, value: str) -> None:
        if value in self.seen:
            return
        if self._match(value) is None:
            raise SchemaValidationError(field, self._problem)
        if self._limit:
            if len(self.seen) >= self._limit:
                self.seen.clear()
            self.seen.add(value)


_TENANT = _Format(TENANT_PATTERN)
_ENTITY_ID = _Format(ENTITY_ID_PATTERN)
_CURRENCY = _Format(CURRENCY_PATTERN)
_EVENT_ID = _Format(EVENT_ID_PATTERN, limit=0)  # unique per event: nothing to remember
_TENANTS_SEEN, _ENTITIES_SEEN, _CURRENCIES_SEEN = _TENANT.seen, _ENTITY_ID.seen, _CURRENCY.seen


def _check_formats(ev: BaseEvent) -> None:
    # Membership first, inline: a method call per field costs as much as the set lookup.
    _EVENT_ID.check("event_id", ev.event_id)
    if ev.tenant not in _TENANTS_SEEN:
        _TENANT.check("tenant", ev.tenant)
    user, seller, currency = ev.user_id, ev.seller_id, ev.currency
    if user is not None and user not in _ENTITIES_SEEN:
        _ENTITY_ID.check("user_id", user)
    if seller is not None and seller not in _ENTITIES_SEEN:
        _ENTITY_ID.check("seller_id", seller)
    if currency is not None and currency not in _CURRENCIES_SEEN:
        _CURRENCY.check("currency", currency)


def _check_rules(ev: BaseEvent, now: datetime | None) -> None:
    """Checks the decoder leaves to us: string formats, property keys per type,
    finite amounts, clock skew."""
    _check_formats(ev)
    if ev.amount is not None and not math.isfinite(ev.amount):
        raise SchemaValidationError("amount", "must be a finite number")
    if (ev.amount is None) != (ev.currency is None):
        missing = "currency" if ev.currency is None else "amount"
        raise SchemaValidationError(missing, "amount and currency go together; give both")
    for key, types, check, hint in PROPERTY_RULES.get(ev.type, ()):
        if key not in ev.properties:
            raise SchemaValidationError(
                f"properties.{key}", f"required for {ev.type} events ({hint})"
            )
        value = ev.properties[key]
        if not isinstance(value, types) or not check(value):
            shown = _clip(repr(value))
            raise SchemaValidationError(f"properties.{key}", f"expected {hint}, got {shown}")
    if ev.event_time < MIN_EVENT_TIME:
        raise SchemaValidationError(
            "event_time",
            f"{ev.event_time.isoformat()} is before {MIN_EVENT_TIME.isoformat()}, the earliest "
            "accepted event time; check the producer's clock (a zero or epoch timestamp?)",
        )
    if ev.event_time.year == 9999 and ev.event_time.utcoffset():
        _check_representable(ev.event_time)
    if now is not None and ev.event_time - now > MAX_FUTURE_SKEW:
        raise SchemaValidationError(
            "event_time",
            f"{ev.event_time.isoformat()} is more than {MAX_FUTURE_SKEW} in the future; "
            "check the producer's clock",
        )


def _check_representable(when: datetime) -> None:
    """Year 9999 with a negative offset is past the last UTC instant Python can hold."""
    try:
        when.astimezone(UTC)
    except OverflowError as e:
        raise SchemaValidationError(
            "event_time", f"{when.isoformat()} is after the last representable UTC instant"
        ) from e


def _nul_error(raw: bytes | str) -> SchemaValidationError | None:
    """The error naming the first string (value or key) holding a NUL character
    (an escaped backslash followed by ``u0000`` is not one), or None; malformed
    JSON is left to the decoder. Iterative: any depth.

    >>> print(_nul_error(rb'{"properties": {"note": "a\\u0000b"}}'))
    properties.note: contains a NUL character (\\u0000), not storable
    >>> print(_nul_error(rb'{"properties": {"tags": [1, {"k\\u0000": 2}]}}'))
    properties.tags[1].k\\u0000: the key contains a NUL character (\\u0000), not storable
    """
    try:
        stack: list[tuple[str, Any]] = [("", msgspec.json.decode(raw))]
    except (msgspec.DecodeError, RecursionError):
        return None
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return SchemaValidationError(_clip(path) or "$", f"contains {_NUL}, not storable")
        elif isinstance(item, dict):
            for key, value in reversed(item.items()):  # reversed: the first key pops first
                key_path = f"{path}.{key}" if path else key
                if "\x00" in key:
                    field = _clip(key_path.replace("\x00", "\\u0000"))
                    return SchemaValidationError(field, f"the key contains {_NUL}, not storable")
                stack.append((key_path, value))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(item))))
    return None


def decode_event(raw: bytes | str, *, now: datetime | None = None) -> BaseEvent:
    """Decode one JSON event and validate it; ``now`` enables the future-skew check."""
    # PostgreSQL text and jsonb cannot hold NUL; refusing it here keeps one bad
    # event from failing a whole batch at the store. A substring search is ~free.
    escaped_nul = b"\\u0000" in raw if isinstance(raw, bytes) else "\\u0000" in raw
    if escaped_nul and (nul := _nul_error(raw)) is not None:
        raise nul
    try:
        ev: BaseEvent = _decoder.decode(raw)
    except msgspec.ValidationError as e:
        raise _field_from(e) from e
    except msgspec.DecodeError as e:
        raise SchemaValidationError("$", f"malformed JSON: {e}") from e
    except RecursionError as e:
        raise SchemaValidationError("$", "JSON nested too deeply") from e
    _check_rules(ev, now)
    return ev


def validate_event(obj: Any, *, now: datetime | None = None) -> BaseEvent:
    """Validate an already-parsed JSON object (dict) as an event."""
    try:
        ev: BaseEvent = msgspec.convert(obj, Event, strict=True)
    except msgspec.ValidationError as e:
        raise _field_from(e) from e
    except RecursionError as e:
        raise SchemaValidationError("$", "JSON nested too deeply") from e
    _check_rules(ev, now)
    return ev


def encode_event(ev: BaseEvent) -> bytes:
    """The event as compact JSON, with its ``type`` tag; round-trips through decode_event."""
    return _encoder.encode(ev)


def split_batch(body: bytes, content_type: str, *, max_items: int | None = None) -> list[bytes]:
    """Split a request body into one raw JSON document per event.

    A JSON array (``application/json``) or one event per line
    (``application/x-ndjson``); the items are kept as raw bytes so each is
    validated on its own and a bad one is dead-lettered exactly as sent. Only
    a body whose items cannot be told apart is refused as a whole
    (``jsonarray.split_array``): a malformed or too deeply nested item is
    that item's problem, as a bad line is in NDJSON. ``max_items`` lets the
    splitter stop early (``jsonarray.TooManyItemsError``) on a huge array.

    >>> split_batch(b'[{"a": 1}, {"b": 2}]', "application/json")
    [b'{"a": 1}', b'{"b": 2}']
    >>> split_batch(b'{"a": 1}\\n\\n{"b": 2}\\n', "application/x-ndjson")
    [b'{"a": 1}', b'{"b": 2}']
    """
    if content_type == "application/x-ndjson":
        return [line.strip() for line in body.splitlines() if line.strip()]
    return split_array(body, max_items=max_items)


def utcnow() -> datetime:
    """The current time, aware UTC (the default clock everywhere)."""
    return datetime.now(UTC)
