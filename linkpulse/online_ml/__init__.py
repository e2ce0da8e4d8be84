"""Online anomaly detection: River models behind ``learn_one`` / ``score_one``.

Knows nothing of where data comes from (see ARCHITECTURE.md). The detectors
arrive with the anomaly-detection issue; this package is their home.
"""
