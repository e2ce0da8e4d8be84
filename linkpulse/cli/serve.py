"""CLI command: ``linkpulse serve``, the HTTP API under uvicorn."""

from __future__ import annotations

import typer

from linkpulse.config import get_settings
from linkpulse.errors import ConfigError


def serve(
    host: str | None = typer.Option(
        None, "--host", help="bind address (default: LINKPULSE_API_HOST, else 127.0.0.1)"
    ),
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help="TCP port (default: LINKPULSE_API_PORT, else 8000)"
    ),
    access_log: bool = typer.Option(
        False, "--access-log/--no-access-log", help="log one line per HTTP request"
    ),
) -> None:
    """Run the HTTP API: POST /v1/events, /healthz, /readyz, /metrics, docs at /docs.

    Starts even when NATS is down (readiness stays red and ingest answers 503
    until it connects). Stop with Ctrl-C.
    """
    # Imported here so `linkpulse --help` stays fast (FastAPI + uvicorn are heavy).
    import uvicorn

    from linkpulse.api import create_app
    from linkpulse.api.access import check_auth_bind

    settings = get_settings()
    bind_host = host or settings.api_host
    try:
        check_auth_bind(settings, bind_host)
    except ConfigError as e:
        typer.secho(f"linkpulse serve: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from e
    bind_port = port or settings.api_port
    typer.echo(f"linkpulse API on http://{bind_host}:{bind_port} (docs at /docs)", err=True)
    uvicorn.run(
        create_app(settings),
        host=bind_host,
        port=bind_port,
        log_level=settings.log_level.lower(),
        access_log=access_log,
        # Keep-alive a little longer than typical load balancers' idle timeouts.
        timeout_keep_alive=75,
    )


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the root app."""
    app.command("serve")(serve)
