"""A layout document and its validation: every problem names the field at fault.

The shape (JSON), on a 12-column grid whose rows are 30 px high::

    {"name": "My operations", "shared": false,
     "widgets": [{"id": "chart-gmv", "kind": "chart", "x": 0, "y": 4, "w": 6, "h": 9,
                  "options": {"metric": "gmv"}}]}

A widget holds where it is and what it asks (a metric, a period, a measure), never a
tenant, a seller or any data: whoever opens a layout sees it with their own scope.

>>> parse_layout({"name": "x", "widgets": [{"id": "a", "kind": "pie", "x": 0, "y": 0,
...     "w": 1, "h": 1}]})
Traceback (most recent call last):
...
linkpulse.layouts.document.LayoutError: widgets[0].kind: unknown widget kind 'pie'; expected one of alerts, chart, heatmap, kpis, top_sellers
"""  # noqa: E501

# LayoutError(field, problem): the first literal is a field name, not a message.
# ruff: noqa: EM101, EM102

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CHART_METRICS",
    "COLS",
    "KINDS",
    "MAX_WIDGETS",
    "LayoutDocument",
    "LayoutError",
    "Widget",
    "parse_layout",
]

COLS: Final = 12
MAX_ROWS: Final = 500
MAX_HEIGHT: Final = 40
MAX_WIDGETS: Final = 24
MAX_NAME: Final = 100
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

# The live metrics a chart can show (docs/metrics.md).
CHART_METRICS: Final = (
    "gmv",
    "orders",
    "page_views",
    "active_users",
    "conversion_rate",
    "payment_failure_rate",
    "refunds",
    "refund_amount",
    "signups",
    "order_value",
)
_MEASURES: Final = ("gmv", "orders", "refunds", "refund_amount", "events", "page_views")


@dataclass(frozen=True)
class _Option:
    """One option of a widget kind: its allowed values (text) or bounds (int), its default."""

    default: str | int
    choices: tuple[str, ...] = ()
    low: int = 0
    high: int = 0


@dataclass(frozen=True)
class _Kind:
    min_w: int
    min_h: int
    options: Mapping[str, _Option] = field(default_factory=dict)


KINDS: Final[Mapping[str, _Kind]] = {
    "kpis": _Kind(3, 3, {"period": _Option("1h", ("1h", "24h", "7d", "30d"))}),
    "chart": _Kind(3, 5, {"metric": _Option("gmv", CHART_METRICS)}),
    "alerts": _Kind(3, 4),
    "top_sellers": _Kind(
        3,
        4,
        {"measure": _Option("gmv", _MEASURES), "limit": _Option(10, low=1, high=50)},
    ),
    "heatmap": _Kind(
        4, 5, {"measure": _Option("events", _MEASURES), "days": _Option(7, low=1, high=90)}
    ),
}


class LayoutError(ValueError):
    """A layout document that can't be used: ``field`` (``widgets[2].w``) and ``problem``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Widget:
    """One widget: its id (unique in the layout), kind, grid cell and size, and options."""

    id: str
    kind: str
    x: int
    y: int
    w: int
    h: int
    options: Mapping[str, str | int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "x": self.x,
            "y": self.y,
            "w": self.w,
            "h": self.h,
            "options": dict(self.options),
        }


@dataclass(frozen=True)
class LayoutDocument:
    """A validated layout: a name, whether the tenant's other users see it, its widgets."""

    name: str
    widgets: tuple[Widget, ...]
    shared: bool = False

    def to_json(self) -> dict[str, Any]:
        """The stored form (``shared`` is kept apart, in its own column)."""
        return {"name": self.name, "widgets": [w.to_json() for w in self.widgets]}


def _object(value: object, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise LayoutError(where, f"expected an object, got {type(value).__name__}")
    for k in value:
        if k not in allowed:
            names = ", ".join(sorted(allowed))
            at = f"{where}.{k}" if where != "$" else str(k)
            raise LayoutError(at, f"unknown field; expected {names}")
    return value


def _int(value: object, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LayoutError(where, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise LayoutError(where, f"expected {low} to {high}, got {value}")
    return value


def _options(value: object, where: str, kind: _Kind) -> dict[str, str | int]:
    raw = _object({} if value is None else value, where, set(kind.options))
    out: dict[str, str | int] = {}
    for name, spec in kind.options.items():
        got = raw.get(name, spec.default)
        at = f"{where}.{name}"
        if spec.choices:
            if got not in spec.choices:
                raise LayoutError(at, f"expected one of {', '.join(spec.choices)}, got {got!r}")
            out[name] = str(got)
        else:
            out[name] = _int(got, at, spec.low, spec.high)
    return out


def _widget(value: object, where: str) -> Widget:
    raw = _object(value, where, {"id", "kind", "x", "y", "w", "h", "options"})
    for name in ("id", "kind", "x", "y", "w", "h"):
        if name not in raw:
            raise LayoutError(f"{where}.{name}", "required")
    wid = raw["id"]
    if not isinstance(wid, str) or not _ID.match(wid):
        raise LayoutError(
            f"{where}.id", f"expected 1-64 of a-z, 0-9, '-', '_' (starting a-z0-9), got {wid!r}"
        )
    kind_name = raw["kind"]
    kind = KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        names = ", ".join(sorted(KINDS))
        raise LayoutError(
            f"{where}.kind", f"unknown widget kind {kind_name!r}; expected one of {names}"
        )
    w = _int(raw["w"], f"{where}.w", kind.min_w, COLS)
    h = _int(raw["h"], f"{where}.h", kind.min_h, MAX_HEIGHT)
    x = _int(raw["x"], f"{where}.x", 0, COLS - w)  # the widget ends inside the grid
    y = _int(raw["y"], f"{where}.y", 0, MAX_ROWS)
    return Widget(
        id=wid,
        kind=str(kind_name),
        x=x,
        y=y,
        w=w,
        h=h,
        options=_options(raw.get("options"), f"{where}.options", kind),
    )


def parse_layout(doc: object) -> LayoutDocument:
    """Validate a layout document (parsed JSON); raise ``LayoutError`` naming the field.

    >>> parse_layout({"name": " ", "widgets": []})
    Traceback (most recent call last):
    ...
    linkpulse.layouts.document.LayoutError: name: expected 1 to 100 characters, not only spaces
    >>> parse_layout({"name": "a", "widgets": [{"id": "c", "kind": "chart", "x": 8, "y": 0,
    ...     "w": 6, "h": 9}]})
    Traceback (most recent call last):
    ...
    linkpulse.layouts.document.LayoutError: widgets[0].x: expected 0 to 6, got 8
    """
    raw = _object(doc, "$", {"name", "shared", "widgets"})
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise LayoutError("name", f"expected 1 to {MAX_NAME} characters, not only spaces")
    shared = raw.get("shared", False)
    if not isinstance(shared, bool):
        raise LayoutError("shared", f"expected true or false, got {shared!r}")
    items = raw.get("widgets")
    if not isinstance(items, list):
        raise LayoutError("widgets", "required: a list of widgets")
    if len(items) > MAX_WIDGETS:
        raise LayoutError("widgets", f"at most {MAX_WIDGETS} widgets, got {len(items)}")
    widgets = tuple(_widget(v, f"widgets[{i}]") for i, v in enumerate(items))
    seen: set[str] = set()
    for i, wdg in enumerate(widgets):
        if wdg.id in seen:
            raise LayoutError(f"widgets[{i}].id", f"duplicate widget id {wdg.id!r}")
        seen.add(wdg.id)
    return LayoutDocument(name=name.strip(), widgets=widgets, shared=shared)
