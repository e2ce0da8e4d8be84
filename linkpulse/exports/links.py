"""Download links that expire: ``<expiry epoch>.<hmac>`` over the export id.

The key is derived from the store's scope secret (``lp_private.scope_secret``,
readable only by the owner), so every API process signs alike and links
survive a restart, with no extra secret to configure. The token alone grants
the download (as a presigned URL does), until it expires; the file is removed
then too (``LINKPULSE_EXPORT_LINK_TTL_S`` after the export finished).

>>> key = download_key("s3cr3t")
>>> t = sign_link(key, "e1", expires=2000)
>>> check_link(key, "e1", t, now=1999)
>>> try:
...     check_link(key, "e1", t, now=2001)
... except LinkError as e:
...     print(e.status)
410
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime

__all__ = ["LinkError", "check_link", "download_key", "sign_link"]


class LinkError(ValueError):
    """A download token that is malformed, forged (403) or expired (410)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def download_key(scope_secret: str) -> bytes:
    """The link-signing key, derived from the scope secret (never the secret itself)."""
    return hmac.new(scope_secret.encode(), b"linkpulse export download v1", hashlib.sha256).digest()


def _mac(key: bytes, export_id: str, expires: int) -> str:
    return hmac.new(key, f"{export_id}|{expires}".encode(), hashlib.sha256).hexdigest()


def sign_link(key: bytes, export_id: str, *, expires: int) -> str:
    """The token letting anyone holding it download ``export_id`` until ``expires`` (epoch s)."""
    return f"{expires}.{_mac(key, export_id, expires)}"


def check_link(key: bytes, export_id: str, token: str, *, now: float | None = None) -> None:
    """Raise LinkError unless ``token`` is a valid, unexpired link to ``export_id``."""
    head, _, mac = token.partition(".")
    if not head.isdigit() or len(head) > 12 or not mac:
        raise LinkError(403, "malformed download token: expected <expiry>.<signature>")
    expires = int(head)
    if not hmac.compare_digest(mac, _mac(key, export_id, expires)):
        raise LinkError(403, "this download token is not valid for this export")
    if (time.time() if now is None else now) >= expires:
        at = datetime.fromtimestamp(expires, UTC).isoformat()
        detail = f"this download link expired at {at}; export again with POST /v1/exports"
        raise LinkError(410, detail)
