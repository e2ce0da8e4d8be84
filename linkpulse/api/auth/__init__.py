"""Principals and their roles: API keys, JWTs, rate limits, the route guard.

The pure parts (``roles``, key format and hashing, JWT claim mapping, limit
parsing) are testable without a server; ``guard`` is the FastAPI dependency.
"""

from __future__ import annotations

from linkpulse.api.auth.roles import (
    ALL_ROLES,
    AUDIT_ROLES,
    INGEST_ROLES,
    STREAM_ROLES,
    Principal,
    Role,
    parse_role,
)

__all__ = [
    "ALL_ROLES",
    "AUDIT_ROLES",
    "INGEST_ROLES",
    "STREAM_ROLES",
    "Principal",
    "Role",
    "parse_role",
]
