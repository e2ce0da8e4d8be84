"""The marketplace's event types: one envelope, one struct per type.

Events are msgspec structs in a tagged union on ``type``, so decoding JSON and
validating it is one fast step, and the JSON Schema producers need comes from
the same definitions. Fields every event carries form the envelope; each type
makes required what it cannot do without (an order needs a seller and an
amount), and its rules for ``properties`` keys live in ``PROPERTY_RULES``.

>>> from linkpulse.schemas import decode_event
>>> ev = decode_event(b'{"type": "page_view", "event_id": "e1", "tenant": "acme",'
...                   b' "event_time": "2026-11-24T10:00:00Z", "properties": {"page": "home"}}')
>>> ev.type, ev.tenant, ev.event_time.isoformat()
('page_view', 'acme', '2026-11-24T10:00:00+00:00')
>>> decode_event(b'{"type": "order_placed", "event_id": "e2", "tenant": "acme",'
...              b' "event_time": "2026-11-24T10:00:00Z"}')
Traceback (most recent call last):
...
linkpulse.errors.SchemaValidationError: user_id: Object missing required field `user_id`
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal

import msgspec

SCHEMA_VERSION: Final = 1

# String formats. msgspec would check a ``pattern`` with a Python regex per
# field and per event (~1.9 us of the ~2.7 us an event took to decode); the
# patterns are instead published in the JSON Schema (``extra_json_schema``)
# and checked by ``codec`` after decoding, where values already seen valid
# (tenants, users, sellers, currencies repeat) skip the regex.
EVENT_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
TENANT_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
ENTITY_ID_PATTERN: Final = r"^[^\s]+$"
CURRENCY_PATTERN: Final = r"^[A-Z]{3}$"

EventId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        extra_json_schema={"pattern": EVENT_ID_PATTERN},
        description="unique id of the event, also the JetStream message id (de-duplication)",
    ),
]
Tenant = Annotated[
    str,
    msgspec.Meta(
        extra_json_schema={"pattern": TENANT_PATTERN},
        description="tenant slug: lowercase letters, digits, '-' or '_', at most 63 characters",
    ),
]
EntityId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=128,
        extra_json_schema={"pattern": ENTITY_ID_PATTERN},
        description="id of a user or seller, no whitespace",
    ),
]
Amount = Annotated[
    float, msgspec.Meta(ge=0, le=1e12, description="money amount in major units, e.g. 12.50")
]
Currency = Annotated[
    str,
    msgspec.Meta(
        extra_json_schema={"pattern": CURRENCY_PATTERN}, description="ISO 4217 code, e.g. USD"
    ),
]
EventTime = Annotated[
    datetime,
    msgspec.Meta(
        tz=True,
        description="when it happened, RFC 3339 with a UTC offset; "
        "at or after 2000-01-01T00:00:00Z, and at most 5 minutes in the future",
    ),
]
Properties = Annotated[
    dict[str, Any], msgspec.Meta(description="free-form details; some types require keys")
]


class BaseEvent(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="type",
    omit_defaults=True,
):
    """The envelope every event carries."""

    event_id: EventId
    event_time: EventTime
    tenant: Tenant
    schema_version: Literal[1] = 1
    user_id: EntityId | None = None
    seller_id: EntityId | None = None
    amount: Amount | None = None
    currency: Currency | None = None
    properties: Properties = {}

    # The event's type name, e.g. ``"order_placed"``: the class's tag, set on
    # each class below. A class attribute, not a property over
    # ``__struct_config__`` (which builds a new object per access): the
    # dataflow reads it several times per event.
    type: ClassVar[str]


class UserSignup(BaseEvent, frozen=True, tag="user_signup"):
    """A new user registered."""

    user_id: EntityId


class PageView(BaseEvent, frozen=True, tag="page_view"):
    """A page was shown; ``properties.page`` says which kind (home, search, product, ...)."""


class ListingCreated(BaseEvent, frozen=True, tag="listing_created"):
    """A seller listed an item; ``properties.listing_id`` names it."""

    seller_id: EntityId


class OrderPlaced(BaseEvent, frozen=True, tag="order_placed"):
    """A buyer placed an order; ``properties.order_id`` names it."""

    user_id: EntityId
    seller_id: EntityId
    amount: Amount
    currency: Currency


class PaymentSettled(BaseEvent, frozen=True, tag="payment_settled"):
    """An order's payment succeeded; its amount is gross merchandise value."""

    user_id: EntityId
    seller_id: EntityId
    amount: Amount
    currency: Currency


class PaymentFailed(BaseEvent, frozen=True, tag="payment_failed"):
    """An order's payment was declined or errored; ``properties.reason`` says why."""

    user_id: EntityId
    seller_id: EntityId
    amount: Amount
    currency: Currency


class RefundIssued(BaseEvent, frozen=True, tag="refund_issued"):
    """Money went back to a buyer."""

    user_id: EntityId
    seller_id: EntityId
    amount: Amount
    currency: Currency


class ReviewPosted(BaseEvent, frozen=True, tag="review_posted"):
    """A buyer reviewed a seller; ``properties.rating`` is 1 to 5."""

    user_id: EntityId
    seller_id: EntityId


class WalletConnected(BaseEvent, frozen=True, tag="wallet_connected"):
    """A user linked a payment wallet; ``properties.provider`` names it."""

    user_id: EntityId


Event = (
    UserSignup
    | PageView
    | ListingCreated
    | OrderPlaced
    | PaymentSettled
    | PaymentFailed
    | RefundIssued
    | ReviewPosted
    | WalletConnected
)

EVENT_CLASSES: Final[tuple[type[BaseEvent], ...]] = (
    UserSignup,
    PageView,
    ListingCreated,
    OrderPlaced,
    PaymentSettled,
    PaymentFailed,
    RefundIssued,
    ReviewPosted,
    WalletConnected,
)
for _cls in EVENT_CLASSES:
    _cls.type = str(_cls.__struct_config__.tag)
EVENT_TYPES: Final[tuple[str, ...]] = tuple(cls.type for cls in EVENT_CLASSES)
EVENT_CLASS_BY_TYPE: Final[dict[str, type[BaseEvent]]] = {cls.type: cls for cls in EVENT_CLASSES}

PAGE_KINDS: Final = ("home", "search", "category", "product", "cart", "checkout", "account")

# Required keys of `properties`, per type: (key, accepted python types, extra check, hint).
PROPERTY_RULES: Final[dict[str, tuple[tuple[str, tuple[type, ...], Any, str], ...]]] = {
    "page_view": (("page", (str,), lambda v: v in PAGE_KINDS, f"one of {', '.join(PAGE_KINDS)}"),),
    "listing_created": (("listing_id", (str,), bool, "a non-empty string"),),
    "order_placed": (("order_id", (str,), bool, "a non-empty string"),),
    "payment_settled": (("order_id", (str,), bool, "a non-empty string"),),
    "payment_failed": (("order_id", (str,), bool, "a non-empty string"),),
    "refund_issued": (("order_id", (str,), bool, "a non-empty string"),),
    "review_posted": (
        ("rating", (int,), lambda v: not isinstance(v, bool) and 1 <= v <= 5, "an integer 1-5"),
    ),
    "wallet_connected": (("provider", (str,), bool, "a non-empty string"),),
}
