"""Online anomaly detection: per-series detectors behind ``score_one`` / ``learn_one``.

Knows nothing of where data comes from (see ARCHITECTURE.md): the flow calls
``update(t, x)`` once per final window (``x=None`` for an empty step) and
stores the ``AnomalyScore``. Public API, documented in
``docs/anomaly-detection.md``:

* ``build_detector(spec)`` / ``detector_for_window(window)``: a detector per
  series, with defaults per metric kind (``count``, ``sum``, ``ratio``,
  ``distinct``, ``level``);
* ``Detector``: the contract; ``PAGE_THRESHOLD`` the default paging score;
* ``build_joint_detector(tenant)``: one multivariate detector per tenant;
* ``explain_root_cause``: name the sellers behind a tenant-level deviation;
* ``Forecaster``: hourly and minutely forecasts with 80% / 95% intervals.
"""

from __future__ import annotations

from linkpulse.online_ml.base import PAGE_THRESHOLD, Detector, JointDetector, score_from_p
from linkpulse.online_ml.binomial import BinomialRate
from linkpulse.online_ml.core import Calibrator, ScalarDetector
from linkpulse.online_ml.ensemble import Ensemble
from linkpulse.online_ml.explain import explain_root_cause, rank_contributors
from linkpulse.online_ml.forecast import Forecaster, evaluate_forecaster, forecaster_for_window
from linkpulse.online_ml.joint import (
    JOINT_DETECTORS,
    TENANT_FEATURES,
    JointHST,
    JointShift,
    build_joint_detector,
)
from linkpulse.online_ml.residual import ForecastResidual
from linkpulse.online_ml.seasonal import SeasonalBaseline
from linkpulse.online_ml.silence import SilentStream
from linkpulse.online_ml.sparse import SparseCounts
from linkpulse.online_ml.spec import (
    DETECTORS,
    KIND_DEFAULTS,
    build_detector,
    detector_for_window,
    load_spec,
    metric_kind,
)
from linkpulse.online_ml.unitvalue import UnitValue

__all__ = [
    "BinomialRate",
    "DETECTORS",
    "JOINT_DETECTORS",
    "KIND_DEFAULTS",
    "PAGE_THRESHOLD",
    "TENANT_FEATURES",
    "Calibrator",
    "Detector",
    "Ensemble",
    "ForecastResidual",
    "Forecaster",
    "JointDetector",
    "JointHST",
    "JointShift",
    "ScalarDetector",
    "SeasonalBaseline",
    "SilentStream",
    "SparseCounts",
    "UnitValue",
    "build_detector",
    "build_joint_detector",
    "detector_for_window",
    "evaluate_forecaster",
    "explain_root_cause",
    "forecaster_for_window",
    "load_spec",
    "metric_kind",
    "rank_contributors",
    "score_from_p",
]
