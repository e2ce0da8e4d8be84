"""What an export is asked for, validated, and the scope it runs in.

A request is a SQL statement over the analyst views (with bound parameters),
or a query-API JSON query. The scope is the caller's: a seller exports its
seller, anyone else their tenant; only admins may name another tenant.

>>> r = ExportRequest(format="csv", sql="SELECT 1")
>>> r.format, r.params
('csv', None)
>>> ExportRequest(format="xml", sql="SELECT 1")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for ExportRequest
format
...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["FORMATS", "ExportRequest", "ExportScope", "ScopeError", "resolve_scope"]

FORMATS = ("csv", "json", "jsonl", "parquet")
Format = Literal["csv", "json", "jsonl", "parquet"]
MAX_SQL_CHARS = 100_000
_NO_NUL = r"^[^\x00]*$"  # PostgreSQL text can't hold NUL: refused here, not as a driver error


class ExportRequest(BaseModel):
    """The body of ``POST /v1/exports``: one of ``sql`` or ``query``, and a format."""

    model_config = ConfigDict(extra="forbid")

    format: Format = Field(description="csv, json, jsonl (JSON lines) or parquet")
    sql: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_SQL_CHARS,
        pattern=_NO_NUL,
        description="one SELECT over the analyst views (docs/analyst-sql.md); placeholders "
        "%s (params a list) or %(name)s (params an object)",
    )
    params: list[Any] | dict[str, Any] | None = Field(
        None, description="values bound to the statement's placeholders"
    )
    query: dict[str, Any] | None = Field(
        None, description="a query-API JSON query (the body of POST /v1/query), instead of sql"
    )
    tenant: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=_NO_NUL,
        description="the tenant to export (admins; others always export their own)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ExportRequest:
        if (self.sql is None) == (self.query is None):
            msg = "give exactly one of sql or query"
            raise ValueError(msg)
        if self.params is not None and self.sql is None:
            msg = "params go with sql"
            raise ValueError(msg)
        return self

    def source(self) -> dict[str, Any]:
        """What the job stores and the watermark names: the statement or query as asked."""
        if self.sql is not None:
            return {"sql": self.sql, "params": self.params}
        return {"query": self.query}


@dataclass(frozen=True)
class ExportScope:
    """Whose data an export reads: one tenant, and one seller for seller principals."""

    tenant: str
    seller: str | None


class ScopeError(ValueError):
    """The caller may not export the tenant it named (or named none where one is needed)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.field = "tenant"


def resolve_scope(
    *,
    tenant: str | None,
    seller: str | None,
    all_tenants: bool,
    asked_tenant: str | None,
) -> ExportScope:
    """The scope of a caller (``tenant``/``seller``/``all_tenants``) asking for ``asked_tenant``.

    >>> resolve_scope(tenant="acme", seller="s1", all_tenants=False, asked_tenant=None)
    ExportScope(tenant='acme', seller='s1')
    >>> resolve_scope(tenant="acme", seller=None, all_tenants=True, asked_tenant="beta")
    ExportScope(tenant='beta', seller=None)
    >>> resolve_scope(tenant="acme", seller=None, all_tenants=False, asked_tenant="beta")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    linkpulse.exports.request.ScopeError: tenant 'beta' is not yours: ...
    """
    if asked_tenant is not None and asked_tenant != tenant and not all_tenants:
        detail = f"tenant {asked_tenant!r} is not yours: this key exports tenant {tenant!r} only"
        raise ScopeError(403, detail)
    chosen = asked_tenant or tenant
    if chosen is None:
        raise ScopeError(422, "name the tenant to export (this principal has none of its own)")
    return ExportScope(tenant=chosen, seller=seller)
