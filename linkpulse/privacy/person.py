"""Whose data: a user id as given, and every value it may be stored under.

When ``user_id`` is a PII field, events hold its pseudonym (under the current
key, or an earlier one before a key rotation), and events stored before
pseudonymisation was turned on hold it raw: erase and export look for all of
them. A dead letter mentions the person when its payload is a JSON object
whose ``user_id`` is one of those values (and, with a tenant, whose tenant is
that one); a payload that is not JSON mentions them when it contains one of
them as a JSON string.

>>> from linkpulse.config import Settings
>>> p = person_of("u1", None, Settings(privacy_pii_fields="user_id", privacy_key="k" * 16))
>>> p.ids[0], p.ids[1][:4], p.label == p.ids[1]
('u1', 'pii_', True)
>>> p.mentioned_in('{"user_id": "u1", "tenant": "acme"}'), p.mentioned_in('{"user_id": "u10"}')
(True, False)
>>> person_of("u 1", None, Settings())
Traceback (most recent call last):
...
ValueError: --user: expected a user id (1 to 128 characters, no whitespace), got 'u 1'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from linkpulse.config import Settings
from linkpulse.privacy import search_pseudonymisers
from linkpulse.schemas.events import ENTITY_ID_PATTERN, TENANT_PATTERN

__all__ = ["Person", "person_of"]

_ENTITY = re.compile(ENTITY_ID_PATTERN)
_TENANT = re.compile(TENANT_PATTERN)


@dataclass(frozen=True)
class Person:
    """A person to erase or export: the values of ``events.user_id`` that are theirs."""

    user_id: str
    tenant: str | None
    ids: tuple[str, ...]
    # What the audit log records: the pseudonym under the current key when there
    # is one (the log must not keep the raw id of a person it erased), else the id.
    label: str

    def mentioned_in(self, payload: str) -> bool:
        """Whether a dead letter's payload is about this person (see the module doc)."""
        try:
            obj = msgspec.json.decode(payload)
        except (msgspec.DecodeError, RecursionError):
            return any(msgspec.json.encode(i).decode() in payload for i in self.ids)
        if not isinstance(obj, dict) or obj.get("user_id") not in self.ids:
            return False
        return self.tenant is None or obj.get("tenant") in (None, self.tenant)

    def quoted(self) -> list[str]:
        """Each id as a JSON string: what a payload mentioning it must contain."""
        return [msgspec.json.encode(i).decode() for i in self.ids]


def person_of(user_id: str, tenant: str | None, settings: Settings) -> Person:
    """The person ``user_id`` (of ``tenant``, or of every tenant); ValueError for bad input."""
    if not (1 <= len(user_id) <= 128 and _ENTITY.fullmatch(user_id)):
        msg = f"--user: expected a user id (1 to 128 characters, no whitespace), got {user_id!r}"
        raise ValueError(msg)
    if tenant is not None and not _TENANT.fullmatch(tenant):
        msg = (
            f"--tenant: expected a tenant slug (lowercase letters, digits, '-' or '_', "
            f"at most 63 characters), got {tenant!r}"
        )
        raise ValueError(msg)
    ids = [user_id]
    keys = search_pseudonymisers(settings)
    for p in keys:
        if p.user_is_pii and p.pseudonym(user_id) not in ids:
            ids.append(p.pseudonym(user_id))
    return Person(user_id, tenant, tuple(ids), keys[0].pseudonym(user_id) if keys else user_id)
