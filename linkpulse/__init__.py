"""linkpulse: real-time analytics and anomaly alerting for a marketplace's event stream."""

from __future__ import annotations

__version__ = "0.1.0"
