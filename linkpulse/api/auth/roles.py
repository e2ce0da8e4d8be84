"""Roles, the ``Principal`` every request carries, and what each role may do.

Pure logic (no HTTP, no database), so the rules can be read and tested alone.
A route declares the roles it admits (one of the ``*_ROLES`` sets below); the
scope (tenant, seller) is checked by the route against the data it serves.

>>> p = Principal(id="lp_0a1b2c3d", role=Role.SELLER, tenant="acme", seller="s1")
>>> p.may(STREAM_ROLES), p.may(INGEST_ROLES)
(True, False)
>>> p.sees(tenant="acme", seller="s1"), p.sees(tenant="acme", seller=None)
(True, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

__all__ = [
    "ALL_ROLES",
    "AUDIT_ROLES",
    "INGEST_ROLES",
    "STREAM_ROLES",
    "Principal",
    "Role",
    "parse_role",
]


class Role(StrEnum):
    """What a principal is: ``admin`` sees every tenant; ``seller`` one seller of one tenant."""

    ADMIN = "admin"
    OPERATOR = "operator"
    ANALYST = "analyst"
    VIEWER = "viewer"
    INGEST = "ingest"
    SELLER = "seller"


ALL_ROLES: Final = frozenset(Role)
# Who may do what. Ingest keys only write; readers only read; the audit log is
# for admins (it names every principal of every tenant).
INGEST_ROLES: Final = frozenset({Role.ADMIN, Role.INGEST})
STREAM_ROLES: Final = frozenset({Role.ADMIN, Role.OPERATOR, Role.ANALYST, Role.VIEWER, Role.SELLER})
AUDIT_ROLES: Final = frozenset({Role.ADMIN})


def parse_role(text: str) -> Role:
    """A role by name, or ValueError listing the roles.

    >>> parse_role("Viewer")
    <Role.VIEWER: 'viewer'>
    >>> parse_role("root")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown role 'root'; expected one of admin, operator, analyst, ...
    """
    try:
        return Role(text.strip().lower())
    except ValueError:
        names = ", ".join(r.value for r in Role)
        msg = f"unknown role {text!r}; expected one of {names}"
        raise ValueError(msg) from None


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key, a JWT subject, or the local user when auth is off.

    ``id`` names the principal in logs, rate limits and the audit log (a key's
    visible prefix, ``jwt:<sub>``, or ``local``); ``tenant`` is None only for
    the local user with auth off (an admin key still has a home tenant, but an
    admin may read any tenant).
    """

    id: str
    role: Role
    tenant: str | None
    seller: str | None = None
    kind: str = "key"  # key, jwt, local
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        if (self.role is Role.SELLER) != (self.seller is not None):
            msg = "a seller principal needs a seller, and only a seller principal has one"
            raise ValueError(msg)

    def may(self, roles: frozenset[Role]) -> bool:
        """Whether this principal's role is one of ``roles``."""
        return self.role in roles

    @property
    def all_tenants(self) -> bool:
        """Admins (and the local user) read every tenant."""
        return self.role is Role.ADMIN

    def sees(self, *, tenant: str, seller: str | None) -> bool:
        """Whether data of ``tenant`` (and of ``seller``, None for tenant-wide) is in scope.

        A seller sees only series broken down by its own seller: a tenant-wide
        figure aggregates every seller's data, so it is out of a seller's scope.

        >>> Principal(id="k", role=Role.VIEWER, tenant="acme").sees(tenant="beta", seller=None)
        False
        """
        if not self.all_tenants and tenant != self.tenant:
            return False
        if self.role is Role.SELLER:
            return seller == self.seller
        return True
