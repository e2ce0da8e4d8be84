"""Service URLs: what an embedded server's URL is, and how to print one safely.

Pure functions, except the port checks at the end.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit


def redact(url: str) -> str:
    """Hide the password in a URL before it is printed.

    >>> redact("postgresql://app:s3cret@db:5432/test")
    'postgresql://app:***@db:5432/test'
    >>> redact("redis://127.0.0.1:6379/0")
    'redis://127.0.0.1:6379/0'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True)
class PgTarget:
    """The role and database a PostgreSQL DSN asks for.

    >>> PgTarget.from_dsn("postgresql://postgres@127.0.0.1:5432/test")
    PgTarget(user='postgres', password=None, dbname='test')
    >>> PgTarget.from_dsn("postgresql://app:pw@h/analytics").url(5999)
    'postgresql://app:pw@127.0.0.1:5999/analytics'
    """

    user: str
    password: str | None
    dbname: str

    @classmethod
    def from_dsn(cls, dsn: str) -> PgTarget:
        parts = urlsplit(dsn)
        user = unquote(parts.username) if parts.username else "postgres"
        password = unquote(parts.password) if parts.password is not None else None
        dbname = unquote(parts.path.lstrip("/")) or user
        return cls(user, password, dbname)

    def url(self, port: int) -> str:
        """The embedded server's DSN: same role and database, loopback and ``port``."""
        auth = quote(self.user, safe="")
        if self.password is not None:
            auth += ":" + quote(self.password, safe="")
        return f"postgresql://{auth}@127.0.0.1:{port}/{quote(self.dbname, safe='')}"


def nats_url(port: int) -> str:
    """
    >>> nats_url(4333)
    'nats://127.0.0.1:4333'
    """
    return f"nats://127.0.0.1:{port}"


def redis_url(port: int, configured: str) -> str:
    """The embedded Redis URL, keeping the configured database number.

    >>> redis_url(6390, "redis://cache.internal:6379/3")
    'redis://127.0.0.1:6390/3'
    >>> redis_url(6390, "unix:///run/redis.sock")
    'redis://127.0.0.1:6390/0'
    """
    db = urlsplit(configured).path.lstrip("/")
    return f"redis://127.0.0.1:{port}/{db if db.isdigit() else '0'}"


def free_port(host: str = "127.0.0.1", avoid: frozenset[int] = frozenset()) -> int:
    """A TCP port nobody listens on right now, chosen by the kernel.

    The port is free when returned; a server started right after binds it
    (a tiny race the health check after start would reveal).

    >>> 1024 < free_port() < 65536
    True
    """
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port
    msg = f"could not find a free TCP port on {host}"
    raise OSError(msg)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now.

    With ``SO_REUSEADDR``, as nats-server, redis-server and postgres bind: the
    TIME_WAIT connections a killed server leaves behind do not count as taken,
    a listener (on this address or on 0.0.0.0) does.

    >>> with socket.socket() as s:
    ...     s.bind(("127.0.0.1", 0)); s.listen(); taken = s.getsockname()[1]
    ...     port_bindable(taken)
    False
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_port_bindable(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    """:func:`port_bindable`, polled for up to ``timeout`` seconds.

    A server killed a moment ago still holds its socket while its threads exit,
    after its main thread already shows as a zombie.
    """
    deadline = time.monotonic() + timeout
    while not port_bindable(port, host):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
