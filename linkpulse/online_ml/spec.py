"""``build_detector(spec)``: detectors from a declarative spec, with defaults per metric kind.

A spec is a mapping (or YAML text): ``detector`` names a registered
detector, ``kind`` (``count``, ``sum``, ``ratio``, ``distinct``, ``level``)
brings that kind's defaults, any other key is an option of the detector, and
``members`` lists an ensemble's member specs (names or mappings).
``series``, ``period_s``, ``grace`` and ``percent`` given at the top reach
every member. A wrong name or option is a ``ValueError`` naming it.

>>> det = build_detector({"kind": "count"}, series="acme|orders||1m")
>>> det.name, [m.name for m in det.members]
('ensemble', ['poisson', 'silence'])
>>> build_detector("detector: seasonal\\nadditive: true\\ngrace: 60").name
'seasonal'
>>> build_detector({"detector": "seasonal", "colour": "red"})
Traceback (most recent call last):
...
ValueError: spec: detector 'seasonal' has no option 'colour'; options: additive, band_sigmas, \
clip, daily_half_life_days, fast_alpha, gap_value, grace, level_half_life_days, nonnegative, \
percent, period_s, point_tail, series, slow_alpha, weekly_half_life_days
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any, Final

import yaml

from linkpulse.online_ml.binomial import BinomialRate
from linkpulse.online_ml.core import ScalarDetector
from linkpulse.online_ml.ensemble import Ensemble
from linkpulse.online_ml.residual import ForecastResidual
from linkpulse.online_ml.seasonal import SeasonalBaseline
from linkpulse.online_ml.silence import SilentStream
from linkpulse.online_ml.sparse import SparseCounts
from linkpulse.online_ml.unitvalue import UnitValue
from linkpulse.operators.metrics import REGISTRY, Registry
from linkpulse.operators.windows import WindowSpec
from linkpulse.schemas.outputs import MetricWindow

# name -> class of every scalar detector a spec can name (the contract test runs over them)
DETECTORS: dict[str, type[ScalarDetector]] = {
    SeasonalBaseline.name: SeasonalBaseline,
    SparseCounts.name: SparseCounts,
    SilentStream.name: SilentStream,
    BinomialRate.name: BinomialRate,
    ForecastResidual.name: ForecastResidual,
    UnitValue.name: UnitValue,
    Ensemble.name: Ensemble,
}
COMMON: Final = ("series", "period_s", "grace", "percent")

KIND_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    # events per step: counts, Poisson-like, 0 when the window is missing
    "count": {"detector": "ensemble", "members": ["poisson", "silence"]},
    # sums of amounts, 0 when no events: a few log-normal orders a minute are heavy-tailed,
    # so one big order is no incident (Student-t point tail); what each event is worth is
    # tested apart on a log scale (unit_value: a drop in amounts with as many orders)
    "sum": {
        "detector": "ensemble",
        "members": [
            {"detector": "seasonal", "point_tail": "t3", "clip": 8.0},
            "unit_value",
            "silence",
        ],
    },
    # sums of a few amounts (one seller's GMV): heavy-tailed, one big order is no incident
    "sparse_sum": {
        "detector": "ensemble",
        "members": [
            {"detector": "seasonal", "point_tail": "t3", "clip": 8.0},
            "unit_value",
            "silence",
        ],
    },
    # distinct counts: like sums, but no single event moves them much
    "distinct": {"detector": "ensemble", "members": ["seasonal", "silence"]},
    # ratios of counts: binomial in the step's trials (pass n=), undefined without trials
    "ratio": {
        "detector": "ensemble",
        "percent": True,
        "members": ["binomial", {"detector": "silence", "zero_is_empty": False}],
    },
    # means, minima, maxima, quantiles of a measure: undefined without events
    "level": {
        "detector": "ensemble",
        "members": [
            {"detector": "seasonal", "gap_value": None},
            {"detector": "silence", "zero_is_empty": False},
        ],
    },
}
# the kind of each MetricWindow.value derivation in the metric registry
VALUE_KIND: Final = {
    "count": "count",
    "sum": "sum",
    "ratio": "ratio",
    "distinct": "distinct",
    "mean": "level",
    "min": "level",
    "max": "level",
    "p50": "level",
    "p95": "level",
    "p99": "level",
}


def register(cls: type[ScalarDetector]) -> type[ScalarDetector]:
    """Add a detector class to ``DETECTORS`` under its ``name`` (usable as a decorator)."""
    DETECTORS[cls.name] = cls
    return cls


def load_spec(spec: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """A spec as a fresh dict: a mapping is copied, a string parsed as YAML."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        try:
            loaded = yaml.safe_load(spec)
        except yaml.YAMLError as e:
            msg = f"spec: not valid YAML: {e}"
            raise ValueError(msg) from e
        if loaded is None:
            return {}
        if not isinstance(loaded, Mapping):
            msg = f"spec: YAML must hold a mapping, got {type(loaded).__name__}"
            raise ValueError(msg)
        spec = loaded
    if not isinstance(spec, Mapping):
        msg = f"spec must be a mapping or YAML text, got {type(spec).__name__}"
        raise ValueError(msg)
    return copy.deepcopy(dict(spec))


def _options(cls: type[ScalarDetector]) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return sorted(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY)


def build_detector(
    spec: Mapping[str, Any] | str | None = None,
    *,
    series: str | None = None,
    kind: str | None = None,
) -> ScalarDetector:
    """Build a detector from ``spec`` (see the module docstring); keywords override it."""
    s = load_spec(spec)
    if series is not None:
        s["series"] = series
    if kind is not None:
        s["kind"] = kind
    return _build(s, "spec", {})


def _build(s: dict[str, Any], where: str, inherited: dict[str, Any]) -> ScalarDetector:
    kind = s.pop("kind", None)
    if kind is not None:
        if kind not in KIND_DEFAULTS:
            msg = f"{where}: kind must be one of {', '.join(KIND_DEFAULTS)}, got {kind!r}"
            raise ValueError(msg)
        defaults = copy.deepcopy(KIND_DEFAULTS[kind])
        if "detector" in s and s["detector"] != defaults.get("detector"):
            # a detector named by the user keeps only the kind's common options (percent)
            defaults = {k: v for k, v in defaults.items() if k in COMMON}
        s = {**defaults, **s}
    name = s.pop("detector", "ensemble" if "members" in s else "seasonal")
    cls = DETECTORS.get(name) if isinstance(name, str) else None
    if cls is None:
        msg = f"{where}: unknown detector {name!r}; known: {', '.join(sorted(DETECTORS))}"
        raise ValueError(msg)
    common: dict[str, Any] = {**inherited, **{k: s[k] for k in COMMON if k in s}}
    members_spec = s.pop("members", None)
    options = _options(cls)
    unknown = sorted(set(s) - set(options))
    if unknown:
        msg = (
            f"{where}: detector {name!r} has no option {unknown[0]!r}; "
            f"options: {', '.join(o for o in options if o != 'members')}"
        )
        raise ValueError(msg)
    params = {**{k: v for k, v in common.items() if k in options}, **s}
    if cls is Ensemble:
        if not isinstance(members_spec, list) or not members_spec:
            msg = f"{where}: an ensemble needs 'members', a list of detector specs"
            raise ValueError(msg)
        members = []
        for i, m in enumerate(members_spec):
            ms: dict[str, Any] = {"detector": m} if isinstance(m, str) else load_spec(m)
            # members learn from the first step; the ensemble's grace decides when it pages
            ms.setdefault("grace", 0)
            members.append(_build(ms, f"{where}.members[{i}]", common))
        params["members"] = members
    elif members_spec is not None:
        msg = f"{where}: only an ensemble takes 'members', not {name!r}"
        raise ValueError(msg)
    try:
        return cls(**params)
    except TypeError as e:
        msg = f"{where}: detector {name!r}: {e}"
        raise ValueError(msg) from e


def metric_kind(metric: str, registry: Registry = REGISTRY) -> str:
    """The detector kind of a registry metric (``count``, ``sum``, ``ratio``, ...).

    >>> metric_kind("gmv"), metric_kind("payment_failure_rate"), metric_kind("order_value")
    ('sum', 'ratio', 'level')
    """
    return VALUE_KIND[registry.get(metric).value]


def series_kind(metric: str, dims_key: str, registry: Registry = REGISTRY) -> str:
    """The kind of one series: its metric's kind, ``sparse_sum`` for a sum per dimension value.

    >>> series_kind("gmv", ""), series_kind("gmv", "seller_id=s1"), series_kind("orders", "x=1")
    ('sum', 'sparse_sum', 'count')
    """
    kind = metric_kind(metric, registry)
    return "sparse_sum" if kind == "sum" and dims_key else kind


def detector_for_window(
    window: MetricWindow,
    specs: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    registry: Registry = REGISTRY,
) -> ScalarDetector:
    """The detector for ``window``'s series: ``specs[metric]`` if given, else its kind's defaults.

    The step is the window's step (``60`` for ``1m``).

    >>> from datetime import UTC, datetime
    >>> w = MetricWindow(metric="gmv", tenant="acme", dims_key="", dimensions={}, window="1m",
    ...     window_start=datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
    ...     window_end=datetime(2026, 11, 24, 10, 1, tzinfo=UTC), value=3.0)
    >>> det = detector_for_window(w)
    >>> det.series, [m.name for m in det.members]
    ('acme|gmv||1m', ['seasonal', 'unit_value', 'silence'])
    """
    spec = load_spec((specs or {}).get(window.metric))
    spec.setdefault("kind", series_kind(window.metric, window.dims_key, registry))
    spec.setdefault("period_s", float(WindowSpec.parse(window.window).step_s))
    spec["series"] = window.series_key
    return _build(spec, f"spec[{window.metric!r}]", {})
