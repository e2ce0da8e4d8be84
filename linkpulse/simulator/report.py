"""The end-of-run summary: events by type, rate achieved, anomalies, labels path."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from linkpulse.simulator.runner import RunSummary


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def render_summary(summary: RunSummary, console: Console) -> None:
    """Print the summary as tables on ``console``."""
    by_type = Table(title="events by type", show_edge=False)
    by_type.add_column("type")
    by_type.add_column("count", justify="right")
    by_type.add_column("share", justify="right")
    for name, count in sorted(summary.counts.items(), key=lambda kv: -kv[1]):
        share = count / summary.events if summary.events else 0.0
        by_type.add_row(name, f"{count:,}", f"{share:.1%}")
    by_type.add_row("[bold]total", f"[bold]{summary.events:,}", "")
    console.print(by_type)
    sim_span = max(summary.sim_end - summary.sim_start, 0.0)
    console.print(
        f"{summary.events:,} events to {summary.destination} in {summary.wall_seconds:.2f} s "
        f"wall ({summary.rate:,.0f} events/s); simulated {_iso(summary.sim_start)} -> "
        f"{_iso(summary.sim_end)} ({sim_span:,.0f} s)"
        + (" [yellow](interrupted)[/]" if summary.interrupted else "")
    )
    if summary.anomalies:
        # Plain lines, not a table: series names are long and must never be cut.
        console.print(f"anomalies injected ({len(summary.anomalies)}):")
        for a in summary.anomalies:
            console.print(
                f"  {a.kind:<14} {a.label()['series']:<40} {_iso(a.start)} -> {_iso(a.end)}"
                f"  magnitude {a.magnitude:g}",
                soft_wrap=True,
            )
    else:
        console.print("no anomalies injected")
    if summary.labels_path is not None:
        console.print(f"labels: {summary.labels_path}")
