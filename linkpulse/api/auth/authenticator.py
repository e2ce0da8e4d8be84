"""From a bearer token to a ``Principal``: API keys (cached lookups) and JWTs.

A token with three dot-separated parts is a JWT and is verified locally; any
other token is an API key, looked up by its hash in ``api_keys``. Lookups are
cached for ``LINKPULSE_AUTH_CACHE_S`` seconds (hits and misses alike), so a
busy ingest key costs one query per few seconds, and a revoked key stops
working within that time (open streams re-check theirs every
``LINKPULSE_STREAM_REVALIDATE_S``).

>>> AuthError(401, "unknown-key", "no such key").status
401
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import psycopg
import psycopg_pool

from linkpulse.api.auth.keys import KeyRecord, KeyStore, hash_key, key_id_of
from linkpulse.api.auth.roles import Principal, Role
from linkpulse.api.auth.tokens import JwtVerifier, TokenError, looks_like_jwt
from linkpulse.errors import LinkpulseError

__all__ = ["LOCAL_PRINCIPAL", "AuthError", "Authenticator"]

# The one principal when LINKPULSE_AUTH=off (loopback only): the laptop's user.
LOCAL_PRINCIPAL = Principal(id="local", role=Role.ADMIN, tenant=None, kind="local")
_CACHE_MAX = 10_000
_LOOKUP_TIMEOUT_S = 3.0


class AuthError(LinkpulseError):
    """Authentication refused (401) or impossible right now (503); ``slug`` names why."""

    def __init__(self, status: int, slug: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail


class Authenticator:
    """Resolve tokens; ``pool`` may be None when only JWTs are accepted."""

    def __init__(
        self,
        *,
        pool: psycopg_pool.AsyncConnectionPool | None,
        verifier: JwtVerifier,
        cache_s: float,
    ) -> None:
        self._pool = pool
        self._verifier = verifier
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self._inflight: dict[str, asyncio.Future[KeyRecord | None]] = {}

    async def authenticate(self, token: str | None) -> Principal:
        """The principal of ``token``, or ``AuthError`` saying what is wrong with it."""
        if not token:
            msg = (
                "no credentials: send 'Authorization: Bearer <key or JWT>' or "
                "'X-API-Key: <key>' (create a key with `linkpulse keys create`)"
            )
            raise AuthError(401, "unauthenticated", msg)
        if looks_like_jwt(token):
            try:
                return self._verifier.verify(token)
            except TokenError as e:
                raise AuthError(401, "invalid-token", str(e)) from e
        key_id = key_id_of(token)
        if key_id is None:
            msg = "malformed API key: expected lp_<8 hex>_<43 characters> or a JWT"
            raise AuthError(401, "invalid-token", msg)
        record = await self._lookup(hash_key(token))
        if record is None:
            msg = f"unknown API key {key_id} (never created, or created on another database)"
            raise AuthError(401, "unknown-key", msg)
        state = record.state(datetime.now(UTC))
        if state != "active":
            msg = f"API key {key_id} is {state}; create a new one with `linkpulse keys create`"
            raise AuthError(401, f"{state}-key", msg)
        return record.principal()

    async def _lookup(self, key_hash: str) -> KeyRecord | None:
        hit = self._cache.get(key_hash)
        if hit is not None and time.monotonic() - hit[0] < self._cache_s:
            return hit[1]
        # One query per key however many requests miss at once: a thousand streams
        # opening together (or re-checking as the entry expires) would otherwise
        # queue a thousand queries on the pool, and most would time out (503).
        pending = self._inflight.get(key_hash)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(key_hash))
            self._inflight[key_hash] = pending
            pending.add_done_callback(lambda f: self._landed(key_hash, f))
        return await asyncio.shield(pending)  # a waiter that goes doesn't cancel the others'

    def _landed(self, key_hash: str, f: asyncio.Future[KeyRecord | None]) -> None:
        self._inflight.pop(key_hash, None)
        if not f.cancelled():
            f.exception()  # retrieved: a failure with every waiter gone isn't logged as lost

    async def _fetch(self, key_hash: str) -> KeyRecord | None:
        now = time.monotonic()
        if self._pool is None:
            raise AuthError(503, "auth-unavailable", "API keys are not available: no database")
        try:
            async with self._pool.connection(timeout=_LOOKUP_TIMEOUT_S) as conn:
                record = await KeyStore(conn).by_hash(key_hash)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
            msg = f"cannot check the API key: the database is unreachable ({type(e).__name__})"
            raise AuthError(503, "auth-unavailable", msg) from e
        if len(self._cache) >= _CACHE_MAX:  # keys are few; a flood of random ones is not
            self._cache.clear()
        self._cache[key_hash] = (now, record)
        return record

    def forget(self) -> None:
        """Drop every cached lookup (tests, and after `keys revoke` in this process)."""
        self._cache.clear()
