"""Opaque keyset cursors: the sort key of a page's last row, bound to its query.

A cursor is base64url JSON ``{"q": <query fingerprint>, "k": [values]}``.
The next page starts strictly after that key (``compiler.after``), so pages
neither skip nor repeat rows when data arrives between requests, and no
``OFFSET`` is scanned. A cursor of another query, or one that does not
decode, or whose values don't fit the key's column types, is refused naming
``cursor`` (it reaches SQL only as typed, bound parameters).

>>> c = encode("abc", ["s1", 42, None, datetime(2026, 12, 1, tzinfo=UTC)])
>>> decode(c, "abc", ["text", "int", "float", "time"])
['s1', 42, None, datetime.datetime(2026, 12, 1, 0, 0, tzinfo=datetime.timezone.utc)]
>>> decode(c, "xyz", ["text"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
linkpulse.query.timegrid.QueryError: cursor: this cursor belongs to another query ...
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from linkpulse.query.timegrid import QueryError

__all__ = ["decode", "encode", "fingerprint"]


def fingerprint(query: Mapping[str, Any]) -> str:
    """A short stable hash of a normalised query (without its cursor)."""
    body = orjson.dumps(
        {k: v for k, v in query.items() if k != "cursor"}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(body).hexdigest()[:16]


def _plain(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.astimezone(UTC).isoformat()
    if isinstance(v, Decimal):
        return float(v)
    return v


def encode(query_fp: str, key: Sequence[Any]) -> str:
    """The cursor of the row whose sort key is ``key``."""
    raw = orjson.dumps({"q": query_fp, "k": [_plain(v) for v in key]})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad(detail: str) -> QueryError:
    return QueryError(field="cursor", detail=detail, status=400)


def _typed(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "text" and isinstance(value, str):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) < 2**63:
            return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "time" and isinstance(value, str):
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if t.tzinfo is not None:
                return t
    raise _bad(detail=f"a cursor value {value!r} is not a {kind}: the cursor was altered")


def decode(cursor: str, query_fp: str, kinds: Sequence[str]) -> list[Any]:
    """The sort key in ``cursor``, checked against the query and the key's column kinds."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = orjson.loads(raw)
    except (binascii.Error, ValueError) as e:
        raise _bad(detail=f"not a cursor this API made ({type(e).__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("k"), list):
        raise _bad(detail="not a cursor this API made")
    if doc.get("q") != query_fp:
        raise _bad(detail="this cursor belongs to another query (send the same query with it)")
    key = doc["k"]
    if len(key) != len(kinds):
        raise _bad(detail="the cursor's key does not fit this query: the cursor was altered")
    return [_typed(v, k) for v, k in zip(key, kinds, strict=True)]
