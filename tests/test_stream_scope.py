"""A seller principal receives its own anomalies and alerts, and never another seller's.

Anomaly scores and alerts name their series with the window series key
(``tenant|metric|dims_key|window``); reading it as a three-part key once gave
seller ``s1|1m``, so a seller saw none of its own scores. Pure: no service.
"""

from __future__ import annotations

import msgspec
import pytest

from linkpulse.api.auth.roles import Principal, Role
from linkpulse.api.stream_filter import parse_update, scoped_filter


def _update(kind: str, series: str) -> bytes:
    return msgspec.json.encode({"series": series, "score": 0.999})


@pytest.mark.parametrize("kind", ["anomalies", "alerts"])
def test_a_seller_sees_its_own_series_and_not_another_sellers(kind: str) -> None:
    seller = Principal(id="lp_test", role=Role.SELLER, tenant="acme", seller="s1")
    flt = scoped_filter(seller, kind)
    own = parse_update(kind, "acme", 1, _update(kind, "acme|gmv|seller_id=s1|1m"))
    other = parse_update(kind, "acme", 2, _update(kind, "acme|gmv|seller_id=s2|1m"))
    tenant_wide = parse_update(kind, "acme", 3, _update(kind, "acme|gmv||1m"))
    assert flt.matches(own)
    assert not flt.matches(other)
    assert not flt.matches(tenant_wide)


def test_a_metric_filter_matches_tenant_level_scores() -> None:
    viewer = Principal(id="lp_view", role=Role.VIEWER, tenant="acme")
    flt = scoped_filter(viewer, "anomalies", metric="gmv")
    assert flt.matches(parse_update("anomalies", "acme", 1, _update("anomalies", "acme|gmv||1m")))
    assert not flt.matches(
        parse_update("anomalies", "acme", 2, _update("anomalies", "acme|orders||1m"))
    )
