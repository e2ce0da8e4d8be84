"""The HTTP API: ingest, health and metrics (more routers join under ``routes``)."""

from __future__ import annotations

from linkpulse.api.app import create_app

__all__ = ["create_app"]
