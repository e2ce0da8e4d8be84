"""`linkpulse simulate`: realistic marketplace traffic with labeled anomalies.

The generator is pure (seed + time range + rate -> events, see ``generator``);
``runner`` paces it in real time or runs it as fast as possible into NATS, a
file, or nowhere (dry run), and writes the labels of the injected anomalies.
"""

from __future__ import annotations

from linkpulse.simulator.anomalies import (
    KINDS,
    Anomaly,
    AnomalySpec,
    load_anomaly_file,
    parse_anomaly,
    parse_duration,
    parse_time,
    resolve,
    write_labels,
)
from linkpulse.simulator.generator import TrafficConfig, generate
from linkpulse.simulator.model import MarketConfig, Marketplace, build_marketplace

__all__ = [
    "KINDS",
    "Anomaly",
    "AnomalySpec",
    "MarketConfig",
    "Marketplace",
    "TrafficConfig",
    "build_marketplace",
    "generate",
    "load_anomaly_file",
    "parse_anomaly",
    "parse_duration",
    "parse_time",
    "resolve",
    "write_labels",
]
