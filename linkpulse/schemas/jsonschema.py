"""JSON Schema of the events, for producers written in other languages.

>>> schema = event_json_schema()
>>> sorted(schema["discriminator"]["mapping"])[:3]
['listing_created', 'order_placed', 'page_view']
"""

from __future__ import annotations

from typing import Any

import msgspec

from linkpulse.schemas.events import PROPERTY_RULES, SCHEMA_VERSION, Event


def event_json_schema() -> dict[str, Any]:
    """A JSON Schema (2020-12) document for one event of any type."""
    schema: dict[str, Any] = msgspec.json.schema(Event)
    defs = schema.get("$defs", {})
    for definition in defs.values():
        tag = definition.get("properties", {}).get("type", {}).get("enum", [None])[0]
        rules = PROPERTY_RULES.get(tag, ())
        if rules:
            props = definition["properties"]["properties"]
            props["required"] = [key for key, *_ in rules]
            props["description"] = "; ".join(f"{key}: {hint}" for key, _, _, hint in rules)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://linkpulse.dev/schemas/event/v{SCHEMA_VERSION}.json",
        "title": f"linkpulse marketplace event, schema version {SCHEMA_VERSION}",
        **schema,
    }
