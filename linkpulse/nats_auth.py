"""Credentials in NATS URLs, percent-decoded, for every NATS connection linkpulse opens.

A password holding ``@``, ``:`` or ``/`` must be percent-encoded in a URL
(``nats://app:p%40ss@host:4222``). nats-py sends the user information of a
server URL as it is written, still encoded, so such a password fails to log
in; it does use explicit ``user``/``password``/``token`` options first, and
those are what ``nats_py_auth`` returns.

>>> nats_py_auth(["nats://app:p%40ss@h:4222", "nats://h2:4222"])
{'user': 'app', 'password': 'p@ss'}
>>> nats_py_auth(["tls://s3cr%2Ft@h"])
{'token': 's3cr/t'}
>>> nats_py_auth(["nats://127.0.0.1:4222"])
{}
"""

from __future__ import annotations

from urllib.parse import SplitResult, unquote, urlsplit

__all__ = ["connect_auth", "nats_py_auth", "split_nats_url"]


def split_nats_url(url: str) -> SplitResult:
    """A NATS server URL's parts; a bare ``host:port`` counts as ``nats://``.

    >>> split_nats_url("127.0.0.1:4222").scheme
    'nats'
    """
    return urlsplit(url if "://" in url else f"nats://{url}")


def connect_auth(url: str) -> dict[str, str]:
    """The CONNECT fields for one URL's credentials: ``user``/``pass`` or ``auth_token``.

    >>> connect_auth("nats://a%20b:c@h")
    {'user': 'a b', 'pass': 'c'}
    """
    parts = split_nats_url(url)
    if parts.username and parts.password is not None:
        return {"user": unquote(parts.username), "pass": unquote(parts.password)}
    if parts.username:
        return {"auth_token": unquote(parts.username)}
    return {}


def nats_py_auth(servers: list[str]) -> dict[str, str]:
    """nats-py ``connect`` options for the first server URL that carries credentials."""
    for url in servers:
        fields = connect_auth(url)
        if "auth_token" in fields:
            return {"token": fields["auth_token"]}
        if fields:
            return {"user": fields["user"], "password": fields["pass"]}
    return {}
