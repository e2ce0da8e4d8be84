"""The exception tree: one root, one-line subclasses per package.

Driver errors are caught at the boundary and re-raised ``from`` the original
with context (table, subject, sequence), so a user sees what failed and where.
"""

from __future__ import annotations


class LinkpulseError(Exception):
    """Root of every error linkpulse raises on purpose."""


class ConfigError(LinkpulseError):
    """A setting (environment variable) is missing or invalid."""


class SchemaValidationError(LinkpulseError, ValueError):
    """An event does not match its schema; ``field`` names where, the message what."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class StackError(LinkpulseError):
    """A local service could not be found, started or stopped."""


class IngestError(LinkpulseError):
    """Events could not be published to NATS JetStream."""


class StoreError(LinkpulseError):
    """The time-series store failed (migration, write, query)."""


class MigrationError(StoreError):
    """A migration could not be applied or an applied file was changed."""


class BackpressureError(LinkpulseError):
    """A sink is overloaded or its backend is down; the caller should slow down and retry."""


class DataflowError(LinkpulseError):
    """The streaming dataflow could not be built or run."""


class AlertError(LinkpulseError):
    """Alert rule evaluation or notification failed."""
