"""Dashboard layouts: the document a user saves (widgets, positions, queries; never data),
its validation, and the templates served to a user who has none.

Pure logic (no HTTP, no database): ``linkpulse/api/routes/layouts.py`` stores and
scopes layouts; the dashboard (``web/``) draws them.

>>> doc = parse_layout({"name": "Mine", "widgets": [
...     {"id": "kpis", "kind": "kpis", "x": 0, "y": 0, "w": 12, "h": 4}]})
>>> doc.name, [w.kind for w in doc.widgets]
('Mine', ['kpis'])
>>> template_for("seller").name
'Seller'
"""

from linkpulse.layouts.document import (
    CHART_METRICS,
    COLS,
    KINDS,
    MAX_WIDGETS,
    LayoutDocument,
    LayoutError,
    Widget,
    parse_layout,
)
from linkpulse.layouts.templates import TEMPLATES, template_for, template_id, template_name_for

__all__ = [
    "CHART_METRICS",
    "COLS",
    "KINDS",
    "MAX_WIDGETS",
    "TEMPLATES",
    "LayoutDocument",
    "LayoutError",
    "Widget",
    "parse_layout",
    "template_for",
    "template_id",
    "template_name_for",
]
