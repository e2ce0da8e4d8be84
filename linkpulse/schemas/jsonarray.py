"""Split a JSON array into its items' raw bytes, however deep or broken the items are.

``msgspec`` splits a well-formed array in C, but it recurses once per nesting
level and judges the document as a whole: one item nested 60,000 levels deep,
or one malformed item, fails every item of the batch. The scanner here finds
the items' boundaries with no recursion and without judging the items, so each
is then validated on its own (the same promise NDJSON lines get).

It finds only what decides where an item ends: strings (so a ``,`` or ``]``
inside one is text), the nesting depth (brackets outside strings), and the
commas at depth 1. Anything else (numbers, literals, garbage, a ``}`` closing
a ``[``) belongs to the item it sits in, and that item's decoder rejects it.
The document is then ``[``, the items separated by commas, ``]``, with JSON
whitespace between: so if every item is valid JSON, the document was a valid
JSON array of those items, and a valid array is split exactly as msgspec
splits it (both property-tested against ``json.loads``).

The scan is vectorised with numpy (whole-buffer operations, no Python loop
per byte or token), so even a 5 MiB body of brackets costs milliseconds.

>>> split_array(b'[{"a": [1, "],\\\\""]}, 2 , "x"]')
[b'{"a": [1, "],\\\\""]}', b'2', b'"x"']
>>> split_array(b'[1 2, 3]')  # an item's own problem is the item's
[b'1 2', b'3']
>>> split_array(b'[1, 2')
Traceback (most recent call last):
...
linkpulse.errors.SchemaValidationError: $: malformed JSON: the array is not closed (byte 5)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from linkpulse.errors import SchemaValidationError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["NOT_AN_ARRAY", "TooManyItemsError", "split_array"]

NOT_AN_ARRAY = "expected a JSON array of events"
# JSON's whitespace (RFC 8259), narrower than bytes.strip()'s.
_WS = b" \t\n\r"
_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_OPENERS, _CLOSERS = (ord("["), ord("{")), (ord("]"), ord("}"))


class TooManyItemsError(SchemaValidationError):
    """The array holds more than the ``max_items`` asked for; ``count`` says how many."""

    def __init__(self, count: int, max_items: int) -> None:
        super().__init__("$", f"the array holds {count} items, more than {max_items}")
        self.count = count


def _malformed(problem: str, at: int) -> SchemaValidationError:
    # "(byte N)" like msgspec's messages: `schema validate` turns it into a line.
    return SchemaValidationError("$", f"malformed JSON: {problem} (byte {at})")


def _not_an_array() -> SchemaValidationError:
    return SchemaValidationError("$", NOT_AN_ARRAY)


def _item(body: bytes, start: int, end: int) -> bytes:
    """The item between two separators, JSON whitespace trimmed; none is an error."""
    while start < end and body[start] in _WS:
        start += 1
    while end > start and body[end - 1] in _WS:
        end -= 1
    if start == end:
        msg = "an empty item (a stray comma?)"
        raise _malformed(msg, start)
    return body[start:end]


def _string_quotes(a: npt.NDArray[np.uint8]) -> npt.NDArray[np.intp]:
    """Positions of the quotes that open or close a string: those not escaped,
    i.e. not preceded by an odd run of backslashes."""
    import numpy as np

    quotes = np.flatnonzero(a == _QUOTE)
    if quotes.size == 0 or not (a == _BACKSLASH).any():
        return quotes
    # For each byte, the position of the last byte at or before it that is not a
    # backslash: a quote at q is preceded by (q - 1) - last[q - 1] backslashes.
    positions = np.arange(a.size, dtype=np.int64)
    last = np.maximum.accumulate(np.where(a == _BACKSLASH, -1, positions))
    before = quotes - 1
    run = np.where(before >= 0, before - last[np.maximum(before, 0)], 0)
    kept: npt.NDArray[np.intp] = quotes[run % 2 == 0]
    return kept


def _scan(body: bytes, max_items: int | None = None) -> list[bytes]:
    """The vectorised splitter (no recursion, any depth); see the module docstring."""
    import numpy as np  # here, not at import: only the fallback needs it

    lead = len(body) - len(body.lstrip(_WS))
    if body[lead : lead + 1] != b"[":
        raise _not_an_array()
    a = np.frombuffer(body, dtype=np.uint8)
    quotes = _string_quotes(a)
    if quotes.size % 2:
        msg = "a string is not closed"
        raise _malformed(msg, int(quotes[-1]))
    opens = (a == _OPENERS[0]) | (a == _OPENERS[1])
    closes = (a == _CLOSERS[0]) | (a == _CLOSERS[1])
    commas = a == _COMMA
    if quotes.size:
        # Bytes inside a string (its quotes included): +1 at each opening quote,
        # -1 just after each closing one, summed (two statements, as a string may
        # open right after one closes).
        toggles = np.zeros(a.size + 1, dtype=np.int8)
        toggles[quotes[0::2]] += 1
        toggles[quotes[1::2] + 1] -= 1
        outside = np.cumsum(toggles[:-1], dtype=np.int8) == 0
        opens &= outside
        closes &= outside
        commas &= outside
    # The depth after each byte; int8 steps of -1, 0 or 1, summed in int32.
    depth = np.cumsum(opens.view(np.int8) - closes.view(np.int8), dtype=np.int32)
    # Only whitespace precedes `lead`, so the array ends where the depth first is 0 again.
    zero = np.flatnonzero(depth[lead:] == 0)
    if zero.size == 0:
        msg = "the array is not closed"
        raise _malformed(msg, len(body))
    end = lead + int(zero[0])
    if body[end] != _CLOSERS[0]:
        msg = "the array is closed by '}'"
        raise _malformed(msg, end)
    if body[end + 1 :].strip(_WS):
        msg = "data after the array"
        raise _malformed(msg, end + 1)
    commas = np.flatnonzero(commas[lead:end] & (depth[lead:end] == 1))
    if commas.size == 0 and not body[lead + 1 : end].strip(_WS):
        return []  # [] (or [ ])
    count = int(commas.size) + 1
    if max_items is not None and count > max_items:
        raise TooManyItemsError(count, max_items)
    bounds = [lead, *(lead + commas).tolist(), end]
    return [_item(body, start + 1, stop) for start, stop in zip(bounds, bounds[1:], strict=False)]


def split_array(body: bytes, *, max_items: int | None = None) -> list[bytes]:
    """The raw bytes of each item of a JSON array; SchemaValidationError if the
    array itself (not one of its items) is malformed, or the body no array.

    A well-formed, shallow array is split by msgspec (fast, in C); anything it
    refuses goes to the scanner, which says what is wrong with the array or
    hands the items over to be judged one by one. With ``max_items``, the
    scanner raises ``TooManyItemsError`` rather than cut more items than that.

    >>> split_array(b' [ {"a": 1} ,{"b": [[[]]]} ] ')
    [b'{"a": 1}', b'{"b": [[[]]]}']
    >>> split_array(b'[' * 5000 + b']' * 5000 + b'x')
    Traceback (most recent call last):
    ...
    linkpulse.errors.SchemaValidationError: $: malformed JSON: data after the array (byte 10000)
    """
    try:
        return [bytes(item) for item in msgspec.json.decode(body, type=list[msgspec.Raw])]
    except msgspec.ValidationError as e:  # valid JSON, but not an array
        raise _not_an_array() from e
    except (msgspec.DecodeError, RecursionError):
        return _scan(body, max_items)
