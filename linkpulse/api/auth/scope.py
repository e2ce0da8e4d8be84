"""Scope checks on data a principal sends: an ingest key writes only its own tenant.

>>> from linkpulse.api.batch import check_items
>>> from linkpulse.api.auth.roles import Principal, Role
>>> raw = [b'{"type": "user_signup", "event_id": "e1", "tenant": "beta", "user_id": "u1",'
...        b' "event_time": "2026-01-01T00:00:00Z"}']
>>> key = Principal(id="lp_0a1b2c3d", role=Role.INGEST, tenant="acme")
>>> checked = confine_to_tenant(check_items(raw, now=None), raw, key)
>>> [(r.field, r.problem) for r in checked.rejected]
[('tenant', "this key (lp_0a1b2c3d) may only send events of tenant 'acme', not 'beta'")]
"""

from __future__ import annotations

from collections.abc import Sequence

from linkpulse.api.auth.roles import Principal
from linkpulse.api.batch import Checked, Rejection

__all__ = ["confine_to_tenant"]


def confine_to_tenant(checked: Checked, items: Sequence[bytes], principal: Principal) -> Checked:
    """Move valid events of another tenant than the principal's to the rejections.

    Admins (and the local user when auth is off) may send any tenant's events.
    """
    if principal.all_tenants:
        return checked
    valid, rejected = [], list(checked.rejected)
    for index, ev in checked.valid:
        if ev.tenant == principal.tenant:
            valid.append((index, ev))
            continue
        problem = (
            f"this key ({principal.id}) may only send events of tenant "
            f"{principal.tenant!r}, not {ev.tenant!r}"
        )
        rejected.append(Rejection(index, items[index], "tenant", problem, ev.event_id, ev.type))
    rejected.sort(key=lambda r: r.index)
    return Checked(valid=valid, rejected=rejected)
