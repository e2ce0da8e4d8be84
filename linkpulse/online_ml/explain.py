"""Explanations: the one-sentence reason of a score, and the root cause across sellers.

>>> sentence("acme|gmv||1m", value=1340.0, expected=2350.0, lower=2100.0, upper=2600.0,
...          slot="Tuesday 14:00", direction="down")
'GMV 43% below the usual for Tuesday 14:00 (expected 2,100-2,600, got 1,340)'
>>> sentence("acme|orders|seller_id=s-17|1m", value=None, expected=12.0, lower=6.0, upper=19.0,
...          slot="Monday 09:30", direction="down", gap_steps=3)
'Orders of seller s-17: no data for 3 steps, usual for Monday 09:30 is 6-19'
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Final

import msgspec

from linkpulse.online_ml.profile import slot_of
from linkpulse.operators.metrics import parse_series_key
from linkpulse.schemas.outputs import AnomalyScore, Contributor

DAY_NAMES: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# Display names where capitalising the metric name is not enough.
LABELS: Final = {
    "gmv": "GMV",
    "page_views": "Page views",
    "payment_failure_rate": "Payment failure rate",
    "conversion_rate": "Conversion rate",
    "active_users": "Active users",
    "refund_amount": "Refund amount",
    "order_value": "Order value",
}


@functools.lru_cache(maxsize=4096)
def slot_label(ts: float) -> str:
    """``"Tuesday 14:00"`` for Unix seconds (UTC).

    >>> slot_label(0.0)
    'Thursday 00:00'
    """
    weekday = slot_of(ts)[0]
    minute = int(ts % 86400.0 // 60.0)
    return f"{DAY_NAMES[weekday]} {minute // 60:02d}:{minute % 60:02d}"


@functools.lru_cache(maxsize=65536)
def series_label(series: str) -> str:
    """A person's name for a series key ``tenant|metric|dims[|window]``.

    >>> series_label("acme|refunds|seller_id=s-3|1m"), series_label("just a name")
    ('Refunds of seller s-3', 'just a name')
    """
    parts = series.split("|")
    if len(parts) < 3:
        return series
    metric, dims = parts[1], parts[2]
    label = LABELS.get(metric) or metric.replace("_", " ").capitalize()
    if dims:
        try:
            values = parse_series_key(f"x|{metric}|{dims}")[2]
        except ValueError:
            return label
        who = ", ".join(f"{k.removesuffix('_id').replace('_', ' ')} {v}" for k, v in values.items())
        label = f"{label} of {who}"
    return label


def fmt_number(v: float, percent: bool = False) -> str:
    """``2,100`` / ``2.5`` / ``0.031`` (3 significant digits below 100), or ``3.1%``.

    >>> fmt_number(2104.6), fmt_number(2.54), fmt_number(0.0312, percent=True)
    ('2,105', '2.54', '3.1%')
    """
    if percent:
        return f"{v * 100.0:.1f}%"
    a = abs(v)
    if a >= 100.0:
        # below 999.5 there is no thousands separator to place, and the plain format is 3x
        # cheaper (every score's sentence formats three numbers)
        return f"{v:.0f}" if a < 999.5 else f"{v:,.0f}"
    return f"{v:.3g}"


def sentence(
    series: str,
    *,
    value: float | None,
    expected: float | None,
    lower: float | None,
    upper: float | None,
    slot: str,
    direction: str,
    gap_steps: int = 0,
    novel: bool = False,
    feature: str = "value",
    percent: bool = False,
) -> str:
    """The one-sentence explanation of a step (see the module docstring)."""
    who = series_label(series)
    band = ""
    if lower is not None and upper is not None:
        band = f"{fmt_number(lower, percent)}-{fmt_number(upper, percent)}"
    if value is None:
        usual = f", usual for {slot} is {band}" if band else ""
        return f"{who}: no data for {gap_steps} step{'s' if gap_steps != 1 else ''}{usual}"
    got = fmt_number(value, percent)
    if expected is None:
        return f"{who} is {got}"
    if direction == "none":
        return f"{who} as usual for {slot} (expected {band}, got {got})"
    if expected != 0.0 and not percent:
        pct = abs(value - expected) / abs(expected) * 100.0
        how = f"{pct:.0f}% {'below' if direction == 'down' else 'above'}"
    else:
        diff = fmt_number(abs(value - expected), percent)
        how = f"{diff} {'below' if direction == 'down' else 'above'}"
    text = f"{who} {how} the usual for {slot} (expected {band}, got {got})"
    if feature in ("recent_mean", "long_mean"):
        text += ", for several steps"
    elif feature == "unit_value":
        text += f", each event worth {'less' if direction == 'down' else 'more'} than usual"
    if novel:
        text += "; outside anything this series has shown"
    return text


def rank_contributors(
    deviation: float,
    parts: Iterable[tuple[str, float | None, float | None]],
    *,
    dimension: str = "seller_id",
    top: int = 3,
) -> list[Contributor]:
    """Rank dimension values by their share of a total ``deviation`` (actual - expected).

    ``parts`` are ``(value, expected, actual)``; a missing actual counts as 0
    (no window means no events). Only values that moved the same way as the
    total are ranked; ``share`` is their delta over the total. When those
    deltas add up to more than the total (a ratio, whose parts do not add up
    to it, or parts that moved the other way and offset them), the share is
    over their sum instead, so the shares never add up to more than 100%.

    >>> [(c.value, round(c.share, 2)) for c in rank_contributors(
    ...     -100.0, [("s1", 80.0, 10.0), ("s2", 50.0, 45.0), ("s3", 20.0, 30.0)])]
    [('s1', 0.7), ('s2', 0.05)]

    A failure rate up 0.45 at the tenant, one seller's up 1.0 and another's 0.5:

    >>> [(c.value, round(c.share, 2)) for c in rank_contributors(
    ...     0.45, [("s1", 0.0, 1.0), ("s2", 0.0, 0.5), ("s3", 0.1, 0.1)])]
    [('s1', 0.67), ('s2', 0.33)]
    """
    if not (deviation != 0.0 and math.isfinite(deviation)):
        return []
    movers: list[tuple[str, float, float | None, float]] = []
    for value, expected, actual in parts:
        if expected is None or not math.isfinite(expected):
            continue
        got = actual if actual is not None and math.isfinite(actual) else 0.0
        delta = got - expected
        if delta / deviation > 0.0:
            movers.append((value, expected, actual, delta))
    total = math.fsum(delta for *_, delta in movers)
    over = total if abs(total) > abs(deviation) else deviation
    ranked = [
        Contributor(
            dimension=dimension,
            value=value,
            delta=delta,
            share=delta / over,
            expected=expected,
            actual=actual,
        )
        for value, expected, actual, delta in movers
    ]
    ranked.sort(key=lambda c: -c.share)
    return ranked[:top]


def explain_root_cause(
    score: AnomalyScore,
    parts: Iterable[AnomalyScore],
    *,
    dimension: str = "seller_id",
    top: int = 3,
) -> AnomalyScore:
    """``score`` (tenant level) with its top ``dimension`` contributors named.

    ``parts`` are the same step's scores of the per-``dimension`` series (the
    flow has them: it scores every seller series too); those of other metrics
    are ignored.

    >>> from datetime import UTC, datetime
    >>> from linkpulse.schemas.outputs import Explanation
    >>> def s(series, value, expected):
    ...     return AnomalyScore(series=series, time=datetime(2026, 11, 24, tzinfo=UTC),
    ...         score=0.0, raw=0.0, value=value, expected=expected, lower=None, upper=None,
    ...         direction="down", warm=True, model="ensemble", explanation="GMV 40% below",
    ...         details=Explanation(detector="seasonal"))
    >>> tenant = s("acme|gmv||1m", 600.0, 1000.0)
    >>> sellers = [s("acme|gmv|seller_id=s-17|1m", 44.0, 300.0), s("acme|gmv|seller_id=s-2|1m",
    ...     280.0, 300.0)]
    >>> explain_root_cause(tenant, sellers).explanation
    'GMV 40% below; seller s-17 accounts for 64% of the drop, s-2 5%'
    """
    if score.expected is None:
        return score
    actual = score.value if score.value is not None else 0.0
    deviation = actual - score.expected
    triples = []
    key = dimension + "="
    metric = score.series.split("|")[1] if score.series.count("|") >= 2 else None
    for part in parts:
        dims = part.series.split("|")
        # only the same metric's series of this dimension (another metric's drop is no share)
        if len(dims) < 3 or dims[1] != metric or not dims[2].startswith(key):
            continue
        value = parse_series_key("|".join(dims[:3]))[2].get(dimension, dims[2])
        triples.append((value, part.expected, part.value))
    ranked = rank_contributors(deviation, triples, dimension=dimension, top=top)
    if not ranked:
        return score
    what = "drop" if deviation < 0 else "rise"
    name = dimension.removesuffix("_id")
    first, *rest = ranked
    text = f"{name} {first.value} accounts for {min(first.share, 1.0) * 100:.0f}% of the {what}"
    text += "".join(f", {c.value} {min(c.share, 1.0) * 100:.0f}%" for c in rest)
    details = msgspec.structs.replace(score.details, contributors=ranked)
    return msgspec.structs.replace(
        score, explanation=f"{score.explanation}; {text}", details=details
    )
