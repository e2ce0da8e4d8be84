"""Event and output types, validation, JSON Schema export.

Imports no engine, database or web code.
"""

from __future__ import annotations

from linkpulse.schemas.codec import decode_event, encode_event, split_batch, validate_event
from linkpulse.schemas.events import (
    EVENT_CLASS_BY_TYPE,
    EVENT_CLASSES,
    EVENT_TYPES,
    SCHEMA_VERSION,
    BaseEvent,
    Event,
    ListingCreated,
    OrderPlaced,
    PageView,
    PaymentFailed,
    PaymentSettled,
    RefundIssued,
    ReviewPosted,
    UserSignup,
    WalletConnected,
)
from linkpulse.schemas.jsonschema import event_json_schema

__all__ = [
    "EVENT_CLASSES",
    "EVENT_CLASS_BY_TYPE",
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "BaseEvent",
    "Event",
    "ListingCreated",
    "OrderPlaced",
    "PageView",
    "PaymentFailed",
    "PaymentSettled",
    "RefundIssued",
    "ReviewPosted",
    "UserSignup",
    "WalletConnected",
    "decode_event",
    "encode_event",
    "event_json_schema",
    "split_batch",
    "validate_event",
]
