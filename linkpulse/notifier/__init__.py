"""The notifier service (``linkpulse run notifier``) and its tables; see docs/notifications.md.

The pure policy is ``linkpulse.alerts.policy``, the contact points
``linkpulse.alerts.delivery``; this package wires them to JetStream and PostgreSQL.
"""

from __future__ import annotations
