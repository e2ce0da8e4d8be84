"""The deployment files are well-formed and only call commands linkpulse has.

No Docker engine runs on the development machines, so the compose file is
checked structurally here rather than started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer.main
import yaml

from linkpulse.cli import app
from linkpulse.config import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def _resolves(path: list[str]) -> bool:
    cmd: Any = typer.main.get_command(app)
    for token in path:
        if token.startswith("-"):
            return True
        sub = getattr(cmd, "commands", {}).get(token)
        if sub is None:
            return not hasattr(cmd, "commands")  # a leaf command: the rest are its arguments
        cmd = sub
    return True


def test_every_linkpulse_service_runs_an_existing_command() -> None:
    services = _compose()["services"]
    linkpulse_services = {
        name: s for name, s in services.items() if s.get("image", "").startswith("linkpulse")
    }
    assert {"api", "dataflow", "migrate"} <= set(linkpulse_services)
    for name, service in linkpulse_services.items():
        assert _resolves(service["command"]), f"{name}: {service['command']} is not a command"


def test_service_dependencies_exist_and_env_names_are_settings() -> None:
    services = _compose()["services"]
    known = {f"LINKPULSE_{n.upper()}" for n in Settings.model_fields}
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for var in service.get("environment", {}):
            if var.startswith("LINKPULSE_"):
                assert var in known, f"{name}: {var} is not a linkpulse setting"


def test_the_database_is_timescaledb_and_ports_are_published() -> None:
    services = _compose()["services"]
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert "-js" in services["nats"]["command"]
    assert any(str(p).endswith(":8000") for p in services["api"]["ports"])
