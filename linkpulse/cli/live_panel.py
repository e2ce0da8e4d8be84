"""The demo's live panel: headline tiles per tenant from the latest windows.

Pure: it turns ``MetricWindow`` values (as the dataflow keeps them in Redis)
into rows, so the rendering is tested without any service.

>>> from datetime import UTC, datetime, timedelta
>>> t = datetime(2026, 11, 24, 10, tzinfo=UTC)
>>> w = MetricWindow(metric="orders", tenant="acme", dims_key="", dimensions={},
...     window="5m/10s", window_start=t, window_end=t + timedelta(minutes=5), value=12.0)
>>> tile_rows([w], window="5m/10s")
[('acme', {'orders': '12'})]
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Final

from linkpulse.schemas.outputs import MetricWindow

# (metric, how to show its value) in the order of the panel's columns.
TILES: Final[tuple[tuple[str, str], ...]] = (
    ("page_views", "{:,.0f}"),
    ("orders", "{:,.0f}"),
    ("gmv", "{:,.2f}"),
    ("active_users", "{:,.0f}"),
    ("conversion_rate", "{:.1%}"),
    ("payment_failure_rate", "{:.1%}"),
    ("refunds", "{:,.0f}"),
    ("late_events", "{:,.0f}"),
)


def tile_rows(
    windows: Iterable[MetricWindow], *, window: str, not_before: datetime | None = None
) -> list[tuple[str, dict[str, str]]]:
    """Per tenant, the newest tenant-wide value of each tile metric for ``window``.

    Windows that ended before ``not_before`` (left by an earlier run) are ignored.
    """
    newest: dict[tuple[str, str], MetricWindow] = {}
    wanted = {name for name, _ in TILES}
    for w in windows:
        if w.window != window or w.dims_key or w.metric not in wanted:
            continue
        if not_before is not None and w.window_end < not_before:
            continue
        key = (w.tenant, w.metric)
        old = newest.get(key)
        if old is None or (w.window_start, w.revision) > (old.window_start, old.revision):
            newest[key] = w
    rows: dict[str, dict[str, str]] = {}
    for (tenant, metric), w in sorted(newest.items()):
        fmt = dict(TILES)[metric]
        rows.setdefault(tenant, {})[metric] = "-" if w.value is None else fmt.format(w.value)
    return sorted(rows.items())
