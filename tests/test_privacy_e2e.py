"""Privacy end to end on the real services: HTTP ingest -> NATS -> dataflow -> PostgreSQL.

With PII fields configured, no raw value reaches the events table, the dead
letters (table and stream) or, for HTTP producers, the events stream; the
same value gets the same pseudonym whichever way it came. Then the CLI's
``privacy erase`` removes the person from the store and the streams (the raw
event a NATS producer published included), fixes the rollups and writes the
audit log; ``privacy export`` and bad input are checked through the CLI too.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from bytewax.testing import run_main
from nats.aio.client import Client
from pydantic import SecretStr
from typer.testing import CliRunner, Result

from linkpulse.bus.stream import dead_letter_stream_name
from linkpulse.bus.subjects import event_subject
from linkpulse.cli import app
from linkpulse.config import Settings, get_settings
from linkpulse.dataflows.live_metrics import FlowOptions, build_flow
from linkpulse.privacy import Pseudonymiser
from linkpulse.store import migrate, refresh
from tests.api_server import ApiServer
from tests.fix_redis import REDIS_URL
from tests.test_dataflow_helpers import TEST_METRICS
from tests.test_store_writer import assert_rollups_match_raw

pytestmark = pytest.mark.integration

KEY = "end-to-end key 0123456789"
FIELDS = "user_id,properties.email,properties.ip,properties.wallet_address"
RAW = ("alice", "alice@example.com", "203.0.113.7", "0xa11ce", "bob@example.com")
NDJSON = {"content-type": "application/x-ndjson"}


def when(minutes: int) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat()


def ev(event_id: str, kind: str, user: str | None, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "event_id": event_id, "tenant": "acme", **fields}
    out.setdefault("event_time", when(3))
    if user is not None:
        out["user_id"] = user
    return out


def order(event_id: str, user: str, **props: Any) -> dict[str, Any]:
    return ev(
        event_id,
        "order_placed",
        user,
        seller_id="s1",
        amount=12.5,
        currency="USD",
        properties={"order_id": event_id, **props},
    )


HTTP_EVENTS = [
    order("h1", "alice", email="alice@example.com", ip="203.0.113.7"),
    ev(
        "h2", "wallet_connected", "alice", properties={"provider": "x", "wallet_address": "0xa11ce"}
    ),
    ev("h3", "page_view", "bob", properties={"page": "home", "email": "bob@example.com"}),
]
HTTP_BAD = [
    {**order("h4", "alice", email="alice@example.com"), "amount": -1},  # rejected: amount
    '{"user_id": "alice", "properties": {"email": "alice@example.com"}',  # not JSON: withheld
]
NATS_EVENT = order("n1", "alice", ip="203.0.113.7")
NATS_BAD = {"type": "order_placed", "event_id": "n2", "user_id": "alice", "tenant": "acme"}


def contains_raw(text: str) -> list[str]:
    return [value for value in RAW if value in text]


async def stream_texts(nc: Client, stream: str) -> list[tuple[int, str]]:
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except Exception:  # noqa: BLE001 - deleted messages leave gaps
            continue
        out.append((seq, (msg.data or b"").decode()))
    return out


def _cli(env: dict[str, str], args: tuple[str, ...]) -> Result:
    get_settings.cache_clear()  # the CLI reads its settings from this environment
    try:
        return CliRunner().invoke(app, ["privacy", *args], env=env)
    finally:
        get_settings.cache_clear()


async def cli(settings: Settings, tmp_path: Path, *args: str) -> Result:
    """``linkpulse privacy ...`` in process (a subprocess costs seconds of imports each)."""
    env = {
        "LINKPULSE_STATE_DIR": str(tmp_path),
        "LINKPULSE_DATABASE_URL": settings.database_url,
        "LINKPULSE_NATS_URL": settings.nats_url,
        "LINKPULSE_STREAM_NAME": settings.stream_name,
        "LINKPULSE_SUBJECT_PREFIX": settings.subject_prefix,
        "LINKPULSE_PRIVACY_PII_FIELDS": FIELDS,
        "LINKPULSE_PRIVACY_KEY": KEY,
    }
    # in a thread: the commands run their own event loops (asyncio.run)
    return await asyncio.to_thread(_cli, env, args)


async def ingest(url: str) -> None:
    lines = [json.dumps(e) for e in HTTP_EVENTS + HTTP_BAD[:1]] + [HTTP_BAD[1]]
    async with httpx.AsyncClient(base_url=url, timeout=15) as http:
        for _ in range(100):  # the API's NATS connection comes up just after it starts
            resp = await http.post("/v1/events", content="\n".join(lines), headers=NDJSON)
            if resp.status_code != 503:
                break
            await asyncio.sleep(0.1)
    assert resp.status_code == 207, resp.text
    assert (resp.json()["accepted"], resp.json()["rejected"]) == (3, 2)


async def test_no_raw_pii_is_stored_and_erase_removes_the_person_everywhere(
    nats_settings: Settings,
    nc: Client,
    pg_dsn: str,
    redis_prefix: str,
    unused_tcp_port: int,
    tmp_path: Path,
) -> None:
    migrate(pg_dsn)
    settings = Settings(
        **{
            **nats_settings.model_dump(),
            "database_url": pg_dsn,
            "redis_url": REDIS_URL,
            "auth": "off",  # loopback: the ingest key path is tested in test_api_auth*
            "privacy_pii_fields": FIELDS,
            "privacy_key": SecretStr(KEY),
        }
    )
    p = Pseudonymiser(KEY.encode(), FIELDS)
    with ApiServer(settings, unused_tcp_port) as url:
        await ingest(url)
    js = nc.jetstream()
    http_last = (await js.stream_info(settings.stream_name)).state.last_seq
    # a producer publishing straight to NATS sends raw values
    subject = event_subject(settings.subject_prefix, "acme", "order_placed")
    await js.publish(subject, json.dumps(NATS_EVENT).encode())
    last = (await js.publish(subject, json.dumps(NATS_BAD).encode())).seq

    opts = FlowOptions(
        metrics=TEST_METRICS, stop_at_seq=last, redis_key_prefix=redis_prefix, scoring=None
    )
    await asyncio.to_thread(run_main, build_flow(settings, opts))

    with psycopg.connect(pg_dsn) as conn:
        events = conn.execute("SELECT event_id, user_id, e::text FROM events e").fetchall()
        letters = [r[0] for r in conn.execute("SELECT d::text FROM dead_letters d").fetchall()]
    assert sorted(r[0] for r in events) == ["h1", "h2", "h3", "n1"]
    assert [contains_raw(r[2]) for r in events] == [[]] * 4
    assert len(letters) == 1 and contains_raw(letters[0]) == []  # the NATS producer's bad one
    # joinable: alice has one pseudonym, whichever way her events came
    users = {r[0]: r[1] for r in events}
    assert users["h1"] == users["h2"] == users["n1"] == p.pseudonym("alice") != users["h3"]
    http_msgs = [t for seq, t in await stream_texts(nc, settings.stream_name) if seq <= http_last]
    assert len(http_msgs) == 3 and [contains_raw(t) for t in http_msgs] == [[]] * 3
    dlq = dead_letter_stream_name(settings)
    dlq_texts = [t for _, t in await stream_texts(nc, dlq)]
    assert len(dlq_texts) == 3 and [contains_raw(t) for t in dlq_texts] == [[]] * 3
    # ... but the raw event of the NATS producer is in the stream until erased (or max age)
    assert any("alice" in t for _, t in await stream_texts(nc, settings.stream_name))

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        refresh(conn)
    dry = await cli(settings, tmp_path, "erase", "--user", "alice", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "events: would delete 3" in dry.stdout
    done = await cli(settings, tmp_path, "erase", "--user", "alice", "--tenant", "acme")
    assert done.exit_code == 0, done.stderr
    assert "events: deleted 3" in done.stdout and "dead letters: deleted 1" in done.stdout
    # h1, h2 (pseudonymised by the API), n1 and n2 (raw, from the NATS producer)
    assert f"stream {settings.stream_name}: deleted 4" in done.stdout

    with psycopg.connect(pg_dsn) as conn:
        left = [r[0] for r in conn.execute("SELECT event_id FROM events").fetchall()]
        assert left == ["h3"]
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
        assert_rollups_match_raw(conn)
        audit = conn.execute(
            "SELECT action, resource, outcome, items, a::text FROM audit_log a ORDER BY at"
        ).fetchall()
    assert [(a[0], a[2], a[3]) for a in audit] == [
        ("privacy.erase.dry_run", "ok", 3),
        ("privacy.erase", "ok", 3),
    ]
    assert audit[1][1] == f"user:{p.pseudonym('alice')}" and "alice" not in audit[1][4]
    remaining = [json.loads(t) for _, t in await stream_texts(nc, settings.stream_name)]
    assert [m["event_id"] for m in remaining] == ["h3"]
    dlq_left = [t for _, t in await stream_texts(nc, dlq)]
    # the HTTP rejection and the flow's letter named alice; the withheld one cannot be found
    assert len(dlq_left) == 1 and "withheld" in dlq_left[0]

    # subject export through the CLI: bob's one event, pseudonymised as stored
    out = tmp_path / "bob.jsonl"
    exported = await cli(settings, tmp_path, "export", "--user", "bob", "--output", str(out))
    assert exported.exit_code == 0, exported.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["table"], r["event_id"], r["user_id"]) for r in rows] == [
        ("events", "h3", p.pseudonym("bob"))
    ]
    # bad input: clear errors, and an unknown person is zero rows, not an error
    unknown = await cli(settings, tmp_path, "erase", "--user", "nobody", "--skip-streams")
    assert unknown.exit_code == 0 and "0 rows" in unknown.stdout, unknown.stderr
    bad_tenant = await cli(settings, tmp_path, "erase", "--user", "bob", "--tenant", "Not A Slug")
    assert bad_tenant.exit_code == 2 and "--tenant: expected a tenant slug" in bad_tenant.stderr
    bad_flag = await cli(settings, tmp_path, "export", "--user", "bob", "--dry-run")
    assert bad_flag.exit_code == 2 and "No such option" in bad_flag.stderr
    no_user = await cli(settings, tmp_path, "export")
    assert no_user.exit_code == 2 and "--user" in no_user.stderr
