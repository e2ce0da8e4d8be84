"""The layouts a user sees before saving one: one per role family.

Operators (and admins) get the operations view, sellers the seller view, everyone
else the executive view. Templates are documents like any other; a user who moves a
widget saves a copy of its own.

>>> template_id("operations"), template_for("operator").name
('template-operations', 'Operations')
>>> sorted(TEMPLATES)
['executive', 'operations', 'seller']
"""

from __future__ import annotations

from typing import Any, Final

from linkpulse.layouts.document import LayoutDocument, parse_layout

__all__ = ["TEMPLATES", "template_for", "template_id", "template_name_for"]


def _w(wid: str, kind: str, x: int, y: int, w: int, h: int, **options: Any) -> dict[str, Any]:
    return {"id": wid, "kind": kind, "x": x, "y": y, "w": w, "h": h, "options": options}


def _chart(metric: str, x: int, y: int, w: int = 6) -> dict[str, Any]:
    return _w(f"chart-{metric}", "chart", x, y, w, 9, metric=metric)


_DOCS: Final[dict[str, dict[str, Any]]] = {
    "operations": {
        "name": "Operations",
        "widgets": [
            _w("kpis", "kpis", 0, 0, 12, 4, period="1h"),
            _chart("gmv", 0, 4),
            _chart("orders", 6, 4),
            _chart("payment_failure_rate", 0, 13),
            _w("alerts", "alerts", 6, 13, 6, 9),
            _w("top-sellers", "top_sellers", 0, 22, 6, 9, measure="gmv", limit=10),
            _w("heatmap", "heatmap", 6, 22, 6, 9, measure="events", days=7),
        ],
    },
    "executive": {
        "name": "Executive",
        "widgets": [
            _w("kpis", "kpis", 0, 0, 12, 4, period="24h"),
            _chart("gmv", 0, 4, 12),
            _chart("active_users", 0, 13),
            _chart("conversion_rate", 6, 13),
            _w("top-sellers", "top_sellers", 0, 22, 6, 9, measure="gmv", limit=10),
            _w("heatmap", "heatmap", 6, 22, 6, 9, measure="events", days=7),
        ],
    },
    "seller": {
        "name": "Seller",
        "widgets": [
            _w("kpis", "kpis", 0, 0, 12, 4, period="24h"),
            _chart("gmv", 0, 4),
            _chart("orders", 6, 4),
            _chart("refunds", 0, 13),
            _w("alerts", "alerts", 6, 13, 6, 9),
            _w("heatmap", "heatmap", 0, 22, 12, 8, measure="orders", days=7),
        ],
    },
}

TEMPLATES: Final[dict[str, LayoutDocument]] = {k: parse_layout(v) for k, v in _DOCS.items()}
# by role name (linkpulse.api.auth.roles.Role values): pure logic, no API import
_FOR_ROLE: Final = {"admin": "operations", "operator": "operations", "seller": "seller"}


def template_id(name: str) -> str:
    """The id a template is served under (never a stored layout's: those are ``lay_...``)."""
    return f"template-{name}"


def template_name_for(role: str) -> str:
    """The template of a role: ``operations``, ``seller`` or ``executive``."""
    return _FOR_ROLE.get(str(role), "executive")


def template_for(role: str) -> LayoutDocument:
    """The template a principal of ``role`` starts from."""
    return TEMPLATES[template_name_for(role)]
