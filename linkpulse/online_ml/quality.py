"""Detection quality: score labeled 1-minute series with the detectors, count incidents.

Pure: it takes dense series (``None`` = empty step) and labels, runs the same
detectors the flow runs (``build_detector`` per series by its metric kind,
``build_joint_detector`` per tenant) and reports, per anomaly kind,
incident-level precision, recall and F1, detection delay in windows, and
false pages per tenant per day of normal traffic.

Rules, so the figures can be checked:

* a *page* is a step whose score is at least the threshold (warm detectors
  only: a cold one scores 0);
* a tenant's pages, over all its series, separated by at most ``merge_gap``
  minutes, are one *incident* (what the alert grouping will page once);
* a label is *detected* if a page on a series of a metric that kind moves
  (``KIND_METRICS``) falls in ``[start, end + after]``; the delay is the
  first such page's minute minus the label's first minute (0 = the first
  window of the anomaly); the *clear delay* is the last minute of the
  incidents it is part of minus the label's end (how long the page outlives
  the anomaly; negative if it cleared first). For a label on one seller (``seller_id``), the
  series must be that seller's, the tenant's own, or the joint one: a page on
  another seller's series is not this seller's anomaly found;
* an incident that overlaps no label window of its tenant is a *false page*.

>>> lab = Label(kind="revenue_drop", tenant="acme", start=10, end=20)
>>> s = {"acme|gmv||1m": [0.0] * 12 + [1.0] * 3 + [0.0] * 40 + [1.0] + [0.0] * 4}
>>> r = evaluate_scores(s, [lab], minutes=60, threshold=0.99)
>>> r["kinds"]["revenue_drop"]["recall"], r["kinds"]["revenue_drop"]["median_delay"]
(1.0, 2.0)
>>> r["kinds"]["revenue_drop"]["median_clear_delay"]  # the pages stopped at minute 14
-6.0
>>> r["overall"]["false_incidents"], r["overall"]["precision"]
(1, 0.5)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import unquote

from linkpulse.online_ml.base import PAGE_THRESHOLD
from linkpulse.online_ml.joint import TENANT_FEATURES, build_joint_detector
from linkpulse.online_ml.spec import build_detector, series_kind
from linkpulse.online_ml.stats import binom_sf
from linkpulse.schemas.outputs import AnomalyScore

JOINT: Final = "joint"
# The metrics whose pages count as detecting each kind (tenant or seller level).
KIND_METRICS: Final = {
    "revenue_drop": ("gmv", JOINT),
    "failure_spike": ("payment_failure_rate", "gmv", JOINT),
    "traffic_surge": ("page_views", "active_users", JOINT),
    "refund_burst": ("refunds", JOINT),
    "silent_stream": ("gmv", "payment_failure_rate", JOINT),
    "gradual_drift": ("page_views", "active_users", "orders", "gmv", JOINT),
    "seller_shift": ("orders", "gmv", JOINT),
    "pattern_change": ("page_views", "active_users", "orders", "gmv", JOINT),
}


@dataclass(frozen=True)
class Label:
    """A labeled anomaly in minutes from the series' start: ``[start, end)``."""

    kind: str
    tenant: str
    start: int
    end: int
    seller_id: str | None = None


@dataclass
class Scored:
    """Per series: the scores (and, for plots, values and bands) of every minute."""

    scores: dict[str, list[float]]
    bands: dict[str, list[tuple[float | None, float | None, float | None]]]


def score_series(
    start: float,
    series: Mapping[str, Sequence[float | None]],
    *,
    specs: Mapping[str, Mapping[str, Any]] | None = None,
    joint: bool = True,
    keep_bands: Iterable[str] = (),
    trials: Mapping[str, Sequence[float | None]] | None = None,
) -> Scored:
    """Run a fresh detector over each series (from its first window on), and joint ones.

    ``series`` keys are ``tenant|metric|dims_key|1m``; each value list holds
    one entry per minute from ``start``; ``trials`` the ratio series' denominators.
    """
    keep = set(keep_bands)
    out = Scored({}, {})
    times = None
    for key, values in series.items():
        metric, dims = key.split("|")[1:3]
        spec = dict((specs or {}).get(metric, {}))
        spec.setdefault("kind", series_kind(metric, dims))
        det = build_detector(spec, series=key)
        n = len(values)
        if times is None or len(times) != n:
            times = [datetime.fromtimestamp(start + 60.0 * i, UTC) for i in range(n)]
        first = next((i for i, v in enumerate(values) if v is not None), n)
        scores = [0.0] * n
        bands: list[tuple[float | None, float | None, float | None]] = [(None, None, None)] * n
        update = det.update
        ns = (trials or {}).get(key) or [None] * n
        for i in range(first, n):
            s = update(times[i], values[i], ns[i])
            scores[i] = s.score
            if key in keep:
                bands[i] = (s.expected, s.lower, s.upper)
        out.scores[key] = scores
        if key in keep:
            out.bands[key] = bands
    if joint:
        counts = _tenant_features(trials or {}, least=1)
        for tenant, feats in _tenant_features(series).items():
            out.scores[f"{tenant}|{JOINT}||1m"] = _score_joint(
                start, tenant, feats, counts.get(tenant, {})
            )
    return out


def _tenant_features(
    series: Mapping[str, Sequence[float | None]], least: int = 2
) -> dict[str, dict[str, Sequence[float | None]]]:
    """Per tenant, its tenant-level series of the joint features (tenants with ``least``)."""
    by_tenant: dict[str, dict[str, Sequence[float | None]]] = {}
    for key, values in series.items():
        tenant, metric, dims, _ = key.split("|")
        if not dims and metric in TENANT_FEATURES:
            by_tenant.setdefault(tenant, {})[metric] = values
    return {t: f for t, f in by_tenant.items() if len(f) >= least}


def _score_joint(
    start: float,
    tenant: str,
    feats: Mapping[str, Sequence[float | None]],
    counts: Mapping[str, Sequence[float | None]],
) -> list[float]:
    """The joint detector's scores; ``counts``: the features' events per step, where known."""
    det = build_joint_detector(tenant, features=tuple(feats))
    n = max(len(v) for v in feats.values())
    scores = [0.0] * n
    for i in range(n):
        t = datetime.fromtimestamp(start + 60.0 * i, UTC)
        s: AnomalyScore = det.update(
            t, {f: v[i] for f, v in feats.items()}, {f: v[i] for f, v in counts.items()}
        )
        scores[i] = s.score
    return scores


def evaluate_scores(
    scores: Mapping[str, Sequence[float]],
    labels: Sequence[Label],
    *,
    minutes: int,
    threshold: float = PAGE_THRESHOLD,
    merge_gap: int = 15,
    after: int = 30,
    from_minute: int = 0,
) -> dict[str, Any]:
    """The quality figures of ``scores`` against ``labels`` (rules in the module docstring)."""
    pages: dict[str, list[tuple[int, str]]] = {}
    # the seller of each page on a per-seller series (pages[tenant][k] -> seller id or None)
    sellers: dict[str, list[str | None]] = {}
    for key, ss in scores.items():
        tenant, metric = key.split("|")[:2]
        seller = _seller_of(key)
        for i in range(from_minute, len(ss)):
            if ss[i] >= threshold:
                pages.setdefault(tenant, []).append((i, metric))
                sellers.setdefault(tenant, []).append(seller)
    incidents: list[tuple[str, int, int, set[str]]] = []
    for tenant, ps in pages.items():
        order = sorted(range(len(ps)), key=ps.__getitem__)
        ps[:] = [ps[k] for k in order]
        sellers[tenant] = [sellers[tenant][k] for k in order]
        cur: list[Any] | None = None
        for i, metric in ps:
            if cur is not None and i - cur[2] <= merge_gap:
                cur[2] = i
                cur[3].add(metric)
            else:
                if cur is not None:
                    incidents.append((cur[0], cur[1], cur[2], cur[3]))
                cur = [tenant, i, i, {metric}]
        if cur is not None:
            incidents.append((cur[0], cur[1], cur[2], cur[3]))

    def overlaps(inc: tuple[str, int, int, set[str]], lab: Label) -> bool:
        return inc[0] == lab.tenant and inc[1] <= lab.end + after and inc[2] >= lab.start

    false_incidents = [inc for inc in incidents if not any(overlaps(inc, lab) for lab in labels)]
    kinds: dict[str, Any] = {}
    delays_all: list[float] = []
    clears_all: list[float] = []
    for kind in sorted({lab.kind for lab in labels}):
        labs = [lab for lab in labels if lab.kind == kind]
        wanted = set(KIND_METRICS.get(kind, ()))
        clears: list[float] = []
        # per label of the kind, in the order given: its delay, or None if not detected
        label_delays: list[float | None] = []
        for lab in labs:
            hits = [
                i
                for (i, metric), seller in zip(
                    pages.get(lab.tenant, []), sellers.get(lab.tenant, []), strict=True
                )
                if metric in wanted
                and lab.start <= i <= lab.end + after
                and (lab.seller_id is None or seller is None or seller == lab.seller_id)
            ]
            label_delays.append(float(min(hits) - lab.start) if hits else None)
            if hits:
                # the last page of the incidents it is part of: how long after the anomaly's
                # end the page goes on (negative: it cleared while the anomaly still ran)
                last = max(inc[2] for inc in incidents if overlaps(inc, lab))
                clears.append(float(last - lab.end))
        delays = [d for d in label_delays if d is not None]
        detected = len(delays)
        tp = sum(1 for inc in incidents if any(overlaps(inc, lab) for lab in labs))
        fp = sum(1 for inc in false_incidents if inc[3] & wanted)
        recall = detected / len(labs)
        precision = tp / (tp + fp) if tp + fp else 0.0
        kinds[kind] = {
            "labels": len(labs),
            "detected": detected,
            "recall": recall,
            "precision": precision,
            "f1": _f1(precision, recall),
            "median_delay": statistics.median(delays) if delays else None,
            "delays": delays,
            "label_delays": label_delays,
            "median_clear_delay": statistics.median(clears) if clears else None,
            "clear_delays": clears,
            "true_incidents": tp,
            "false_incidents_on_its_metrics": fp,
        }
        delays_all += delays
        clears_all += clears
    tp_all = len(incidents) - len(false_incidents)
    precision = tp_all / len(incidents) if incidents else 0.0
    recall = sum(k["detected"] for k in kinds.values()) / len(labels) if labels else 0.0
    tenants = {k.split("|")[0] for k in scores}
    label_minutes = sum(lab.end - lab.start + after for lab in labels)
    normal_days = max((len(tenants) * (minutes - from_minute) - label_minutes) / 1440.0, 1e-9)
    return {
        "overall": {
            "labels": len(labels),
            "incidents": len(incidents),
            "false_incidents": len(false_incidents),
            "precision": precision,
            "recall": recall,
            "f1": _f1(precision, recall),
            "median_delay": statistics.median(delays_all) if delays_all else None,
            "median_clear_delay": statistics.median(clears_all) if clears_all else None,
            "false_pages_per_tenant_day": len(false_incidents) / normal_days,
            "normal_tenant_days": normal_days,
        },
        "kinds": kinds,
        "false_pages": [
            {"tenant": t, "start": a, "end": b, "metrics": sorted(m)}
            for t, a, b, m in false_incidents
        ],
    }


def oracle_rate_delay(
    rates: Sequence[float | None],
    trials: Sequence[float | None],
    lab: Label,
    base_rate: float,
    *,
    threshold: float = PAGE_THRESHOLD,
    after: int = 30,
    steps_per_day: float = 1440.0,
) -> float | None:
    """The delay of an oracle on a rise of a ratio: the earliest the data let any detector page.

    The oracle knows the usual rate (``base_rate``) and when the anomaly
    began. At each minute ``m`` from the label's start on, it tests every
    window from a minute ``a >= start`` to ``m`` with the binomial upper tail
    of its successes (``rate * trials`` per minute), and pages at the first
    window whose tail is at most the p a page needs (score ``threshold``:
    ``-ln(threshold) / steps_per_day``), counting none of its many tests. A
    detector must learn the rate and cannot know the start, so it pages no
    sooner on average: the gap between the two is what modelling can still win.
    ``None``: the oracle too finds nothing before ``lab.end + after``.

    >>> lab = Label(kind="failure_spike", tenant="acme", start=5, end=20)
    >>> rates = [0.0] * 5 + [0.4] * 15  # 4 of 10 payments fail from minute 5, usually 2%
    >>> oracle_rate_delay(rates, [10.0] * 20, lab, 0.02)  # 8 of 20 in its first two minutes
    1.0
    >>> oracle_rate_delay([0.0] * 5 + [0.5] * 15, [2.0] * 20, lab, 0.02)  # 1 of 2 a minute
    4.0
    >>> oracle_rate_delay([0.0] * 20, [2.0] * 20, lab, 0.02) is None  # no rise: no page
    True
    """
    alpha = -math.log(threshold) / steps_per_day
    stop = min(len(rates), len(trials), lab.end + after + 1)
    for m in range(lab.start, stop):
        k = n = 0
        for a in range(m, lab.start - 1, -1):
            x, t = rates[a], trials[a]
            if x is not None and t is not None and t > 0:
                n += round(t)
                k += round(x * t)
            if n and binom_sf(k, n, base_rate) <= alpha:
                return float(m - lab.start)
    return None


def _seller_of(key: str) -> str | None:
    """The seller id of a per-seller series key (``seller_id=...`` in its dims), else None.

    >>> _seller_of("acme|orders|seller_id=acme-s0001|1m"), _seller_of("acme|orders||1m")
    ('acme-s0001', None)
    """
    parts = key.split("|")
    dims = parts[2] if len(parts) > 2 else ""
    for item in dims.split(","):
        name, _, value = item.partition("=")
        if name == "seller_id" and value:
            return unquote(value)  # dims_key escapes values
    return None


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def merge_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pool several runs' figures (counts summed; rates recomputed)."""
    kinds: dict[str, dict[str, Any]] = {}
    for r in reports:
        for kind, k in r["kinds"].items():
            empty = {"labels": 0, "detected": 0, "tp": 0, "fp": 0, "delays": [], "clears": [],
                     "oracle": []}  # fmt: skip
            acc = kinds.setdefault(kind, empty)
            acc["labels"] += k["labels"]
            acc["detected"] += k["detected"]
            acc["delays"] += k["delays"]
            acc["clears"] += k["clear_delays"]
            acc["oracle"] += [d for d in k.get("oracle_delays", ()) if d is not None]
            acc["fp"] += k["false_incidents_on_its_metrics"]
            acc["tp"] += k["true_incidents"]
    out_kinds = {}
    for kind, acc in kinds.items():
        recall = acc["detected"] / acc["labels"] if acc["labels"] else 0.0
        tp = acc["tp"]
        precision = tp / (tp + acc["fp"]) if tp + acc["fp"] else 0.0
        out_kinds[kind] = {
            "labels": acc["labels"],
            "detected": acc["detected"],
            "recall": recall,
            "precision": precision,
            "f1": _f1(precision, recall),
            "median_delay": statistics.median(acc["delays"]) if acc["delays"] else None,
            "median_clear_delay": statistics.median(acc["clears"]) if acc["clears"] else None,
            # where the evaluation knows the earliest possible page (oracle_rate_delay)
            "median_oracle_delay": statistics.median(acc["oracle"]) if acc["oracle"] else None,
            "true_incidents": tp,
            "false_incidents_on_its_metrics": acc["fp"],
        }
    labels = sum(r["overall"]["labels"] for r in reports)
    incidents = sum(r["overall"]["incidents"] for r in reports)
    false = sum(r["overall"]["false_incidents"] for r in reports)
    days = sum(r["overall"]["normal_tenant_days"] for r in reports)
    detected = sum(k["detected"] for k in out_kinds.values())
    delays = [d for r in reports for k in r["kinds"].values() for d in k["delays"]]
    clears = [d for r in reports for k in r["kinds"].values() for d in k["clear_delays"]]
    precision = (incidents - false) / incidents if incidents else 0.0
    recall = detected / labels if labels else 0.0
    return {
        "overall": {
            "labels": labels,
            "incidents": incidents,
            "false_incidents": false,
            "precision": precision,
            "recall": recall,
            "f1": _f1(precision, recall),
            "median_delay": statistics.median(delays) if delays else None,
            "median_clear_delay": statistics.median(clears) if clears else None,
            "false_pages_per_tenant_day": false / days if days else math.nan,
            "normal_tenant_days": days,
        },
        "kinds": out_kinds,
    }
