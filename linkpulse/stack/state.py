"""The state folder: what ``linkpulse up`` started, and the env file for other shells.

Layout of ``<state_dir>``::

    state.json   processes started by `up` (pid, port, binary, url, ...), last port of each
    env          `export LINKPULSE_*_URL=...` lines; `load_settings` reads it
    lock         held while `up`/`down` change the state, so two runs never race
    nats/ redis/ postgres/   each embedded service's data and log

Pure parts (rendering, parsing) are separate from the file I/O so they are
testable without a disk.

>>> rec = EmbeddedProcess("redis", 4242, 6390, "/bin/redis-server", "redis://127.0.0.1:6390/0")
>>> StackState.from_json(StackState({"redis": rec}).to_json()).services["redis"] == rec
True
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from linkpulse.errors import StackError

STATE_FILE = "state.json"
ENV_FILE = "env"
LOCK_FILE = "lock"
STATE_VERSION = 1

# The environment variable each service's URL is read from (see linkpulse/config.py).
ENV_VARS: Mapping[str, str] = {
    "nats": "LINKPULSE_NATS_URL",
    "redis": "LINKPULSE_REDIS_URL",
    "postgres": "LINKPULSE_DATABASE_URL",
}
SERVICES: tuple[str, ...] = ("nats", "redis", "postgres")


@dataclass(frozen=True)
class EmbeddedProcess:
    """One server process that ``linkpulse up`` started and ``linkpulse down`` may stop.

    ``create_time`` (seconds since the epoch, from the kernel) pins the record to
    the exact process: a reused pid has another start time, so it is never killed.
    """

    service: str
    pid: int
    port: int
    binary: str
    url: str
    data_dir: str = ""
    log_file: str = ""
    create_time: float = 0.0
    run_as: str = ""


@dataclass
class StackState:
    """Everything in ``state.json``: embedded processes by service name, and their ports.

    ``ports`` remembers the port each embedded service last used, and outlives
    the process record (a crash, ``linkpulse down``): a service started again
    gets the same port, so clients that hold its URL reconnect.

    >>> st = StackState()
    >>> st.record(EmbeddedProcess("nats", 1, 4333, "/x/nats-server", "nats://127.0.0.1:4333"))
    >>> del st.services["nats"]  # it died
    >>> st.ports
    {'nats': 4333}
    """

    services: dict[str, EmbeddedProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def record(self, rec: EmbeddedProcess) -> None:
        """Remember a started process and its port."""
        self.services[rec.service] = rec
        self.ports[rec.service] = rec.port

    def to_json(self) -> str:
        """Serialize, with a version number so a future layout can migrate old files."""
        body = {
            "version": STATE_VERSION,
            "services": {name: asdict(rec) for name, rec in sorted(self.services.items())},
            "ports": dict(sorted(self.ports.items())),
        }
        return json.dumps(body, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> StackState:
        """Parse ``state.json``; raise StackError naming the problem if it is damaged."""
        try:
            body = json.loads(text)
            if body.get("version") != STATE_VERSION:
                msg = f"unsupported state file version {body.get('version')!r}"
                raise ValueError(msg)
            services = {
                name: EmbeddedProcess(**_known_fields(raw))
                for name, raw in body.get("services", {}).items()
            }
            # Files written before "ports" existed: the running records' ports.
            ports = {name: rec.port for name, rec in services.items()}
            ports.update(_ports(body.get("ports", {})))
        except (ValueError, TypeError, AttributeError) as e:
            msg = (
                f"the state file is damaged ({e}); stop leftover servers by hand "
                "(see its pids) and delete it, then run `linkpulse up` again"
            )
            raise StackError(msg) from e
        return cls(services, ports)


def _ports(raw: Mapping[str, Any]) -> dict[str, int]:
    out = {}
    for name, port in raw.items():
        if name not in SERVICES or not isinstance(port, int) or not 0 < port < 65536:
            msg = f"ports.{name}: expected a service name and a TCP port, got {port!r}"
            raise ValueError(msg)
        out[name] = port
    return out


def _known_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    names = EmbeddedProcess.__dataclass_fields__.keys()
    return {k: v for k, v in raw.items() if k in names}


def render_env(urls: Mapping[str, str]) -> str:
    """The env file: one ``export`` line per service URL, shell-quoted.

    Both ``source <state>/env`` in a POSIX shell and python-dotenv (which
    ``load_settings`` uses) read this format.

    >>> print(render_env({"redis": "redis://127.0.0.1:6390/0"}), end="")
    # written by `linkpulse up`; use in a shell with: source <this file>
    export LINKPULSE_REDIS_URL=redis://127.0.0.1:6390/0
    """
    lines = ["# written by `linkpulse up`; use in a shell with: source <this file>"]
    for service in SERVICES:
        if service in urls:
            lines.append(f"export {ENV_VARS[service]}={shlex.quote(urls[service])}")
    return "\n".join(lines) + "\n"


def parse_env(text: str) -> dict[str, str]:
    """Read back an env file written by :func:`render_env` (variable -> value).

    >>> parse_env("# c\\nexport LINKPULSE_NATS_URL='nats://h:1'\\n")
    {'LINKPULSE_NATS_URL': 'nats://h:1'}
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            out[name] = value
    return out


class StateDir:
    """File access to one state folder."""

    def __init__(self, root: Path) -> None:
        # Absolute: servers run with their data folder as working directory, so a
        # relative path in their command line would point somewhere else.
        self.root = root.absolute()

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def env_file(self) -> Path:
        return self.root / ENV_FILE

    def service_dir(self, service: str) -> Path:
        """Data folder of one embedded service, created on demand."""
        path = self.root / service
        path.mkdir(parents=True, exist_ok=True)
        return path

    def load(self) -> StackState:
        """The recorded state, empty when nothing was ever started here."""
        try:
            return StackState.from_json(self.state_file.read_text())
        except FileNotFoundError:
            return StackState()

    def save(self, state: StackState, urls: Mapping[str, str]) -> None:
        """Write ``state.json`` and the env file atomically (rename over the old ones)."""
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.state_file, state.to_json())
        if urls:
            _atomic_write(self.env_file, render_env(urls))
        else:
            self.env_file.unlink(missing_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder so concurrent `up`/`down` runs queue up."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fh = (self.root / LOCK_FILE).open("a")
        except OSError as e:
            msg = (
                f"cannot use {self.root} as the state folder ({e.strerror}); "
                "pass --state-dir (or set LINKPULSE_STATE_DIR) to a writable folder"
            )
            raise StackError(msg) from e
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
