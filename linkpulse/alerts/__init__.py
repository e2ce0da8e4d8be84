"""Alerting: rule state machine, grouping, dedup, silences, notifiers.

Never blocks the dataflow on a slow notifier (see ARCHITECTURE.md). The rules
and notifiers arrive with the alerting issue; this package is their home.
"""
