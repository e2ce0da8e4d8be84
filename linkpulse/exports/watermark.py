"""The watermark every export carries: who exported what, when, in which scope.

The formats take it as a mapping of strings (Parquet key-value metadata, a CSV
comment line, a JSON field). The statement is included in full, with a
sha256 so two exports of the same question can be matched.

>>> from datetime import UTC, datetime
>>> w = make_watermark(export_id="x1", principal="lp_1", role="analyst", tenant="acme",
...                    seller=None, source={"sql": "SELECT 1", "params": None},
...                    at=datetime(2026, 12, 1, tzinfo=UTC))
>>> w["exported_by"], w["exported_at"], w["scope"]
('lp_1', '2026-12-01T00:00:00+00:00', 'tenant=acme')
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["make_watermark"]


def make_watermark(
    *,
    export_id: str,
    principal: str,
    role: str,
    tenant: str,
    seller: str | None,
    source: dict[str, Any],
    at: datetime | None = None,
) -> dict[str, str]:
    """The watermark of one export (every value a string)."""
    what = orjson.dumps(source, option=orjson.OPT_SORT_KEYS).decode()
    scope = f"tenant={tenant}" + (f",seller={seller}" if seller else "")
    return {
        "export_id": export_id,
        "exported_by": principal,
        "role": role,
        "scope": scope,
        "exported_at": (at or datetime.now(UTC)).isoformat(),
        "source": what,
        "source_sha256": hashlib.sha256(what.encode()).hexdigest(),
        "producer": "linkpulse",
    }
