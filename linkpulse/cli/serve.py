"""CLI command: ``linkpulse serve``, the HTTP API under uvicorn."""

from __future__ import annotations

from enum import StrEnum

import typer

from linkpulse.config import get_settings
from linkpulse.errors import ConfigError


class Loop(StrEnum):
    """uvicorn's event loop choices."""

    AUTO = "auto"
    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


class Http(StrEnum):
    """uvicorn's HTTP/1.1 implementation choices."""

    AUTO = "auto"
    H11 = "h11"
    HTTPTOOLS = "httptools"


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
    loop: Loop = typer.Option(
        Loop.AUTO,
        "--loop",
        help="event loop: auto (uvloop when installed), asyncio or uvloop (benchmarks compare)",
    ),
    http: Http = typer.Option(
        Http.AUTO,
        "--http",
        help="HTTP/1.1 parser: auto (httptools when installed), h11 or httptools",
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
        loop=loop.value,
        http=http.value,
        # Keep-alive a little longer than typical load balancers' idle timeouts.
        timeout_keep_alive=75,
    )


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the root app."""
    app.command("serve")(serve)
