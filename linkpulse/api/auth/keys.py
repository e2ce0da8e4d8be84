"""API keys: made here, stored only as hashes, looked up by hash.

A key reads ``lp_<8 hex>_<43 url-safe chars>``. The first part (``lp_<8 hex>``)
is its id: stored in clear, printed by ``linkpulse keys list`` and in the audit
log, so a key can be recognised without being known. The database keeps the
sha256 of the whole key. A slow password hash (bcrypt, argon2) buys nothing
here: the secret is 256 random bits, not a guessable password, and a fast hash
keeps each request's lookup cheap.

>>> key = new_key()
>>> key.id == key.secret[:11] and key.hash == hash_key(key.secret)
True
>>> key_id_of("lp_0123abcd_" + "x" * 43)
'lp_0123abcd'
>>> key_id_of("Bearer nonsense") is None
True
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row

from linkpulse.api.auth.roles import Principal, Role

__all__ = [
    "KeyRecord",
    "KeyStore",
    "NewKey",
    "hash_key",
    "key_id_of",
    "new_key",
]

_KEY = re.compile(r"^(lp_[0-9a-f]{8})_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: ``secret`` is shown once, only ``id`` and ``hash`` are stored."""

    id: str
    secret: str
    hash: str


def new_key() -> NewKey:
    """A new random key (256-bit secret)."""
    key_id = f"lp_{secrets.token_hex(4)}"
    secret = f"{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id, secret, hash_key(secret))


def hash_key(secret: str) -> str:
    """The stored form of a key: sha256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_of(secret: str) -> str | None:
    """The id part of a well-formed key, or None if ``secret`` is not shaped like one."""
    m = _KEY.match(secret)
    return m[1] if m else None


@dataclass(frozen=True)
class KeyRecord:
    """One row of ``api_keys`` (never the key itself)."""

    key_id: str
    name: str
    role: str
    tenant: str
    seller: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def usable(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def state(self, now: datetime) -> str:
        """``active``, ``revoked`` or ``expired`` (for listings and refusals)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def principal(self) -> Principal:
        """The principal this key authenticates."""
        return Principal(
            id=self.key_id,
            role=Role(self.role),
            tenant=self.tenant,
            seller=self.seller,
            kind="key",
            expires_at=self.expires_at,
        )


_COLUMNS = "key_id, name, role, tenant, seller, created_at, expires_at, revoked_at"


class KeyStore:
    """The ``api_keys`` table, through one async connection the caller owns."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self._conn = conn

    async def create(
        self,
        *,
        role: Role,
        tenant: str,
        seller: str | None = None,
        name: str = "",
        expires_at: datetime | None = None,
    ) -> tuple[NewKey, KeyRecord]:
        """Store a new key; return it (its secret shown once) and its record."""
        Principal(id="new", role=role, tenant=tenant, seller=seller)  # ValueError if incoherent
        if not tenant.strip():
            msg = "--tenant must not be empty"
            raise ValueError(msg)
        key = new_key()
        async with self._conn.cursor(row_factory=class_row(KeyRecord)) as cur:
            await cur.execute(
                "INSERT INTO api_keys (key_id, key_hash, name, role, tenant, seller, expires_at)"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (key.id, key.hash, name, role.value, tenant, seller, expires_at),
            )
            record = await cur.fetchone()
        assert record is not None  # RETURNING always gives the row
        return key, record

    async def by_hash(self, key_hash: str) -> KeyRecord | None:
        """The key with this hash, usable or not (the caller says why it refuses)."""
        async with self._conn.cursor(row_factory=class_row(KeyRecord)) as cur:
            await cur.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = %s", (key_hash,))
            return await cur.fetchone()

    async def list(self, tenant: str | None = None) -> list[KeyRecord]:
        """Every key (of one tenant when given), newest first."""
        async with self._conn.cursor(row_factory=class_row(KeyRecord)) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE %(t)s::text IS NULL OR tenant = %(t)s"
                " ORDER BY created_at DESC, key_id",
                {"t": tenant},
            )
            return await cur.fetchall()

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Revoke a key by id (idempotent: the first revocation time is kept)."""
        async with self._conn.cursor(row_factory=class_row(KeyRecord)) as cur:
            await cur.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
                f" WHERE key_id = %s RETURNING {_COLUMNS}",
                (key_id,),
            )
            return await cur.fetchone()
