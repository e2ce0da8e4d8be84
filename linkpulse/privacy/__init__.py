"""Privacy: PII pseudonymised at ingest, and a person's data erased or exported on request.

``pseudonymiser_for(settings)`` is what the ingest paths call (None when no
PII field is configured, so they skip the step entirely); ``erase`` and
``subject`` (imported on demand, they need the store) implement
``linkpulse privacy erase`` and ``export``. See docs/privacy.md.

>>> from linkpulse.config import Settings
>>> pseudonymiser_for(Settings()) is None
True
>>> p = pseudonymiser_for(Settings(privacy_pii_fields="user_id", privacy_key="k" * 16))
>>> p is pseudonymiser_for(Settings(privacy_pii_fields="user_id", privacy_key="k" * 16))
True
"""

from __future__ import annotations

from functools import lru_cache

from linkpulse.config import Settings
from linkpulse.privacy.pseudonym import PSEUDONYM_PREFIX, Pseudonymiser, is_pseudonym

__all__ = [
    "PSEUDONYM_PREFIX",
    "Pseudonymiser",
    "is_pseudonym",
    "pseudonymiser_for",
    "search_pseudonymisers",
]


@lru_cache(maxsize=8)
def _cached(fields: str, key: str) -> Pseudonymiser:
    return Pseudonymiser(key.encode(), fields)


def pseudonymiser_for(settings: Settings) -> Pseudonymiser | None:
    """The pseudonymiser of ``settings``, shared per (fields, key); None when there is
    nothing to pseudonymise (no PII field, or ``LINKPULSE_PRIVACY_KEEP_RAW``)."""
    if settings.privacy_keep_raw or not settings.privacy_pii_fields.strip(", "):
        return None
    return _cached(settings.privacy_pii_fields, settings.privacy_key.get_secret_value())


def search_pseudonymisers(settings: Settings) -> list[Pseudonymiser]:
    """The current pseudonymiser and one per previous key (for erase and export).

    >>> s = Settings(privacy_pii_fields="user_id", privacy_key="k" * 16,
    ...              privacy_previous_keys="o" * 16 + ", " + "p" * 16)
    >>> len(search_pseudonymisers(s)), search_pseudonymisers(Settings())
    (3, [])
    """
    current = pseudonymiser_for(settings)
    if current is None:
        return []
    old = settings.privacy_previous_keys.get_secret_value().split(",")
    return [current] + [_cached(settings.privacy_pii_fields, k.strip()) for k in old if k.strip()]
