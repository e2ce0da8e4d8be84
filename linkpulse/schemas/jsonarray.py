"""Split a JSON array into its items' raw bytes, however deep or broken the items are.

``msgspec`` splits a well-formed array in C, but it recurses once per nesting
level and judges the document as a whole: one item nested 60,000 levels deep,
or one malformed item, fails every item of the batch. The scanner here finds
the items' boundaries with no recursion and without judging the items, so each
is then validated on its own (the same promise NDJSON lines get).

It tracks only what decides where an item ends: strings (skipped whole, so a
``,`` or ``]`` inside one is text) and brackets (a stack of the closers owed,
so a mismatch is caught). Anything else between those tokens (numbers,
literals, garbage) belongs to the item it sits in, and that item's decoder
rejects it. So if every item it returns is valid JSON, the document was a
valid JSON array of those items (property-tested against ``json.loads``).

>>> split_array(b'[{"a": [1, "],"]}, 2 , "x"]')
[b'{"a": [1, "],"]}', b'2', b'"x"']
>>> split_array(b'[1 2, 3]')  # an item's own problem is the item's
[b'1 2', b'3']
>>> split_array(b'[1, 2')
Traceback (most recent call last):
...
linkpulse.errors.SchemaValidationError: $: malformed JSON: the array is not closed (byte 5)
"""

from __future__ import annotations

import re

import msgspec

from linkpulse.errors import SchemaValidationError

__all__ = ["split_array"]

NOT_AN_ARRAY = "expected a JSON array of events"
# JSON's whitespace (RFC 8259), narrower than bytes.strip()'s.
_WS = b" \t\n\r"
# A whole string (escapes consumed in pairs, so \" does not end it), or one
# structural byte; a lone '"' is a string that never ends.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},"]', re.DOTALL)
_OPEN, _CLOSE, _QUOTE, _COMMA = b"[{", b"]}", ord('"'), ord(",")
_CLOSER = {ord("["): ord("]"), ord("{"): ord("}")}


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


def _scan(body: bytes) -> list[bytes]:
    """The iterative splitter (no recursion, any depth); see the module docstring."""
    lead = len(body) - len(body.lstrip(_WS))
    if body[lead : lead + 1] != b"[":
        raise _not_an_array()
    owed: list[int] = [ord("]")]  # closing bytes still owed, innermost last
    items: list[bytes] = []
    item_start = lead + 1
    for token in _TOKEN.finditer(body, lead + 1):
        at = token.start()
        byte = body[at]
        if byte == _QUOTE:
            if token.end() - at == 1:
                msg = "a string is not closed"
                raise _malformed(msg, at)
        elif byte in _OPEN:
            owed.append(_CLOSER[byte])
        elif byte == _COMMA:
            if len(owed) == 1:
                items.append(_item(body, item_start, at))
                item_start = at + 1
        else:  # a closing bracket
            if byte != owed[-1]:
                msg = f"{chr(byte)!r} where {chr(owed[-1])!r} was due"
                raise _malformed(msg, at)
            owed.pop()
            if not owed:
                if items or body[item_start:at].strip(_WS):
                    items.append(_item(body, item_start, at))
                if body[at + 1 :].strip(_WS):
                    msg = "data after the array"
                    raise _malformed(msg, at + 1)
                return items
    msg = "the array is not closed"
    raise _malformed(msg, len(body))


def split_array(body: bytes) -> list[bytes]:
    """The raw bytes of each item of a JSON array; SchemaValidationError if the
    array itself (not one of its items) is malformed, or the body no array.

    A well-formed, shallow array is split by msgspec (fast, in C); anything it
    refuses goes to the scanner, which says what is wrong with the array or
    hands the items over to be judged one by one.

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
        return _scan(body)
