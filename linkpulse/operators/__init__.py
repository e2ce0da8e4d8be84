"""Pure, engine-agnostic stream logic for the live metrics (no Bytewax, NATS, DB or web).

Public API: ``MetricsConfig`` builds a ``PreAggregator`` (per partition),
a ``WindowAggregator`` (keyed step) or a ``MetricsPipeline`` (both);
``REGISTRY`` lists the metrics; the accumulators, window specs and watermark
are exported for reuse. See ``docs/metrics.md``.
"""

from __future__ import annotations

from linkpulse.operators.accumulators import (
    Distinct,
    DistinctSpec,
    Moments,
    Quantiles,
    QuantileSpec,
    Ratio,
)
from linkpulse.operators.aggregator import WindowAggregator
from linkpulse.operators.metrics import (
    LATE_EVENTS,
    REGISTRY,
    Metric,
    Registry,
    Term,
    dims_key,
    parse_series_key,
    parse_window_series_key,
    prop_equals,
    series_key,
)
from linkpulse.operators.pipeline import MetricsConfig, MetricsPipeline, PreAggregator
from linkpulse.operators.preaggregate import (
    PaneBatch,
    compile_plan,
    merge_partials,
    preaggregate,
    route,
    split_by_route,
)
from linkpulse.operators.watermark import Watermark
from linkpulse.operators.windows import DEFAULT_WINDOWS, SLIDING, TUMBLING, WindowSpec

__all__ = [
    "DEFAULT_WINDOWS",
    "LATE_EVENTS",
    "REGISTRY",
    "SLIDING",
    "TUMBLING",
    "Distinct",
    "DistinctSpec",
    "Metric",
    "MetricsConfig",
    "MetricsPipeline",
    "Moments",
    "PaneBatch",
    "PreAggregator",
    "QuantileSpec",
    "Quantiles",
    "Ratio",
    "Registry",
    "Term",
    "Watermark",
    "WindowAggregator",
    "WindowSpec",
    "compile_plan",
    "dims_key",
    "merge_partials",
    "parse_series_key",
    "parse_window_series_key",
    "preaggregate",
    "prop_equals",
    "route",
    "series_key",
    "split_by_route",
]
