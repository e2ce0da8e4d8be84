"""Principals end to end: keys and JWTs, the authorization matrix over every route and
role, ingest scope, rate limits, auth off on loopback only, the audit log.

The integration tests run the real API (uvicorn) against real PostgreSQL, Redis and NATS.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.routing import APIRoute, APIWebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from linkpulse.api import create_app
from linkpulse.api.auth.guard import Need
from linkpulse.api.auth.keys import hash_key, key_id_of, new_key
from linkpulse.api.auth.ratelimit import parse_limits
from linkpulse.api.auth.roles import (
    ALL_ROLES,
    AUDIT_ROLES,
    INGEST_ROLES,
    STREAM_ROLES,
    Principal,
    Role,
)
from linkpulse.api.auth.tokens import JwtVerifier, TokenError
from linkpulse.config import Settings
from tests.api_server import ApiServer
from tests.event_examples import example
from tests.fix_access import KEY_SPECS, Keys, wait_streams_ready

# The PagerDuty webhook is authenticated by its signature (tests/test_notifier_api.py), an
# export's download by its signed, expiring link (tests/test_exports*.py); the dashboard's
# page and assets hold no data (it asks the API with the user's key).
PUBLIC = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/integrations/pagerduty",
    "/v1/exports/{export_id}/download",
    "/",
    "/assets/{name:path}",
}
# Every protected route and the roles it admits: a change here is a change of policy.
EXPECTED: dict[tuple[str, str], frozenset[Role]] = {
    ("POST", "/v1/events"): INGEST_ROLES,
    ("GET", "/v1/stream/metrics"): STREAM_ROLES,
    ("GET", "/v1/stream/anomalies"): STREAM_ROLES,
    ("GET", "/v1/stream/alerts"): STREAM_ROLES,
    ("GET", "/v1/audit"): AUDIT_ROLES,
    ("WS", "/v1/ws"): STREAM_ROLES,  # the WebSocket stream (101 counts as allowed)
}
# Alerting routes: their own role matrix, with real bodies, is in tests/test_notifier_api.py.
ALERTING: dict[tuple[str, str], frozenset[Role]] = {
    ("GET", "/v1/alerts"): STREAM_ROLES,
    ("GET", "/v1/alerts/{alert_id}"): STREAM_ROLES,
    ("POST", "/v1/alerts/{alert_id}/ack"): frozenset({Role.ADMIN, Role.OPERATOR}),
    ("GET", "/v1/notifications"): frozenset({Role.ADMIN, Role.OPERATOR}),
    ("GET", "/v1/silences"): STREAM_ROLES,
    ("POST", "/v1/silences"): frozenset({Role.ADMIN, Role.OPERATOR}),
    ("DELETE", "/v1/silences/{silence_id}"): frozenset({Role.ADMIN, Role.OPERATOR}),
}
# Reading the store: queries for every reader, SQL for those who write it, exports for those
# who take data away (docs/queries.md, docs/sql-endpoint.md, docs/exports.md).
SQL_WRITERS = frozenset({Role.ADMIN, Role.OPERATOR, Role.ANALYST, Role.SELLER})
EXPORTERS = frozenset({Role.ADMIN, Role.ANALYST, Role.SELLER})
READING: dict[tuple[str, str], frozenset[Role]] = {
    **{
        ("GET", path): STREAM_ROLES
        for path in (
            "/v1/catalog",
            "/v1/series",
            "/v1/kpis",
            "/v1/top",
            "/v1/anomalies",
            "/v1/forecasts",
            "/v1/me",
            "/v1/layouts",
            "/v1/layouts/{layout_id}",
        )
    },
    ("POST", "/v1/query"): STREAM_ROLES,
    ("POST", "/v1/layouts"): STREAM_ROLES,
    ("PUT", "/v1/layouts/{layout_id}"): STREAM_ROLES,
    ("DELETE", "/v1/layouts/{layout_id}"): STREAM_ROLES,
    ("POST", "/v1/sql"): SQL_WRITERS,
    ("POST", "/v1/sql/explain"): SQL_WRITERS,
    ("POST", "/v1/exports"): EXPORTERS,
    ("GET", "/v1/exports/{export_id}"): EXPORTERS,
    ("GET", "/v1/exports/{export_id}/events"): EXPORTERS,
}
ROLE_KEYS = ["admin", "operator", "analyst", "viewer", "ingest", "seller"]


def api_routes(routes: Iterable[Any]) -> Iterator[APIRoute | APIWebSocketRoute]:
    """Every APIRoute and WebSocket route, also inside included routers (FastAPI wraps those)."""
    for route in routes:
        if isinstance(route, APIRoute | APIWebSocketRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from api_routes(route.original_router.routes)


def _needs(route: APIRoute | APIWebSocketRoute) -> list[Need]:
    return [d.call for d in route.dependant.dependencies if isinstance(d.call, Need)]


# -- pure ---------------------------------------------------------------------------------


def test_every_route_declares_its_roles_or_is_public() -> None:
    app = create_app(Settings())
    seen = {}
    for route in api_routes(app.routes):  # the docs are Starlette routes: public by design
        for method in getattr(route, "methods", None) or {"WS"}:
            needs = _needs(route)
            if route.path in PUBLIC:
                assert needs == [], f"{route.path} is public but declares a role"
                continue
            assert len(needs) == 1, f"{method} {route.path} declares no role (Need)"
            seen[(method, route.path)] = needs[0].roles
    assert seen == {**EXPECTED, **ALERTING, **READING}


def test_principal_scope_rules() -> None:
    seller = Principal(id="k", role=Role.SELLER, tenant="acme", seller="s1")
    assert seller.sees(tenant="acme", seller="s1")
    assert not seller.sees(tenant="acme", seller="s2")
    assert not seller.sees(tenant="acme", seller=None)  # a tenant-wide figure mixes sellers
    admin = Principal(id="a", role=Role.ADMIN, tenant="acme")
    assert admin.sees(tenant="beta", seller=None)
    with pytest.raises(ValueError, match="seller"):
        Principal(id="x", role=Role.SELLER, tenant="acme")
    with pytest.raises(ValueError, match="seller"):
        Principal(id="x", role=Role.VIEWER, tenant="acme", seller="s1")


def test_keys_are_random_and_only_their_hash_identifies_them() -> None:
    a, b = new_key(), new_key()
    assert a.secret != b.secret and a.hash != b.hash
    assert key_id_of(a.secret) == a.id and hash_key(a.secret) == a.hash
    assert a.secret not in a.hash
    for bad in ["", "lp_", a.secret + "x", a.secret[:-1], "LP" + a.secret[2:]]:
        assert key_id_of(bad) is None, bad


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("viewer=1", "expected role=rate/burst"),
        ("viewer=a/b", "expected role=rate/burst"),
        ("viewer=0/1", "rate > 0"),
        ("viewer=1/0", "burst >= 1"),
        ("boss=1/1", "unknown role 'boss'"),
    ],
)
def test_rate_limit_settings_name_the_bad_part(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_limits(text)


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[Any, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public_pem


def _token(private: Any, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "sub": "u1",
        "iss": "https://idp.example",
        "aud": "linkpulse",
        "exp": now + 600,
        "role": "seller",
        "tenant": "acme",
        "seller": "s1",
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, private, algorithm="RS256", headers={"kid": "k1"})


def _verifier(key: Any) -> JwtVerifier:
    return JwtVerifier(
        keys=key, algorithms=["RS256"], audience="linkpulse", issuer="https://idp.example"
    )


def test_a_valid_jwt_maps_its_claims_to_a_principal(rsa_keys: tuple[Any, str]) -> None:
    private, public_pem = rsa_keys
    p = _verifier(public_pem).verify(_token(private))
    assert (p.id, p.role, p.tenant, p.seller, p.kind) == (
        "jwt:u1",
        Role.SELLER,
        "acme",
        "s1",
        "jwt",
    )


@pytest.mark.parametrize(
    ("claims", "problem"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "https://evil.example"}, "issuer"),
        ({"exp": None}, "exp"),
        ({"role": None}, "'role'"),
        ({"role": "root"}, "unknown role 'root'"),
        ({"tenant": None}, "'tenant'"),
        ({"seller": None}, "seller"),
    ],
)
def test_a_bad_jwt_is_refused_saying_why(
    rsa_keys: tuple[Any, str], claims: dict[str, Any], problem: str
) -> None:
    private, public_pem = rsa_keys
    with pytest.raises(TokenError, match=problem):
        _verifier(public_pem).verify(_token(private, **claims))


def test_a_jwt_signed_by_another_key_is_refused(rsa_keys: tuple[Any, str]) -> None:
    _, public_pem = rsa_keys
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(TokenError, match="Signature verification failed"):
        _verifier(public_pem).verify(_token(other))


def test_a_jwks_file_picks_the_key_by_kid(rsa_keys: tuple[Any, str], tmp_path: Path) -> None:
    private, _ = rsa_keys
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1"}]}))
    settings = Settings(
        auth_jwt_jwks_file=tmp_path / "jwks.json",
        auth_jwt_audience="linkpulse",
        auth_jwt_issuer="https://idp.example",
        auth_jwt_algorithms="RS256",
    )
    verifier = JwtVerifier.from_settings(settings)
    assert verifier.verify(_token(private)).tenant == "acme"
    unknown = jwt.encode({"exp": 9999999999}, private, algorithm="RS256", headers={"kid": "k9"})
    with pytest.raises(TokenError, match="key id 'k9'"):
        verifier.verify(unknown)


# -- the running API -----------------------------------------------------------------------


async def _status(http: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]) -> int:
    """The status of one request; a stream is opened and closed at once."""
    if method == "WS":
        url = str(http.base_url).replace("http", "ws", 1).rstrip("/") + path
        try:
            async with connect(url, additional_headers=headers, open_timeout=20):
                return 200
        except InvalidStatus as e:
            return e.response.status_code
    if method == "POST":
        return (await http.post(path, headers=headers, json=[example("user_signup")])).status_code
    async with http.stream(method, path, headers=headers) as resp:
        return resp.status_code


@pytest.mark.integration
async def test_authorization_matrix_every_route_every_role(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    for (method, path), allowed in EXPECTED.items():
        for name in ROLE_KEYS:
            role = KEY_SPECS[name][0]
            status = await _status(http, method, path, keys.headers(name))
            if role in allowed:
                assert status in (200, 207), f"{name} on {method} {path}: {status}"
            else:
                assert status == 403, f"{name} on {method} {path}: {status}"


@pytest.mark.integration
async def test_authorization_matrix_of_the_reading_routes(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    """The role check comes before anything else: a refused role gets 403 whatever it sends,
    an admitted one an answer about its request (200, or 404/422 for the made-up ids and
    bodies used here), never 401 or 403."""
    for (method, path), allowed in READING.items():
        url = path.replace("{layout_id}", "0").replace("{export_id}", "0")
        for name in ROLE_KEYS:
            role = KEY_SPECS[name][0]
            status = await _status(http, method, url, keys.headers(name))
            if role in allowed:
                assert status not in (401, 403) and status < 500, f"{name} {method} {url}: {status}"
            else:
                assert status == 403, f"{name} on {method} {url}: {status}"


def _assert_problem(resp: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = resp.json()
    assert body["status"] == status and body["detail"]
    for word in words:
        assert word in body["detail"], body
    return body


async def _ws_refusal(
    http: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> httpx.Response:
    """The HTTP response refusing a WebSocket upgrade, as an httpx.Response."""
    url = str(http.base_url).replace("http", "ws", 1).rstrip("/") + path
    with pytest.raises(InvalidStatus) as info:
        await connect(url, additional_headers=headers, open_timeout=20)
    r = info.value.response
    body = bytes(r.body or b"")
    return httpx.Response(r.status_code, headers=list(r.headers.raw_items()), content=body)


@pytest.mark.integration
async def test_no_unknown_revoked_expired_or_malformed_credentials_give_401(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    unknown = new_key().secret
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "no credentials"),
        ({"Authorization": f"Bearer {unknown}"}, f"unknown API key {key_id_of(unknown)}"),
        ({"X-API-Key": unknown}, "unknown API key"),
        (keys.headers("revoked"), "is revoked"),
        (keys.headers("expired"), "is expired"),
        ({"Authorization": "Bearer nonsense"}, "malformed API key"),
        ({"Authorization": "Bearer a.b.c"}, "JWT"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "no credentials"),
    ]
    for method, path in EXPECTED:
        for headers, words in cases:
            if method == "WS":  # refused before the upgrade, with the same HTTP answer
                resp = await _ws_refusal(http, path, headers)
            elif method == "POST":
                resp = await http.post(path, headers=headers, json=[])
            else:
                resp = await http.get(path, headers=headers)
            body = _assert_problem(resp, 401, words)
            assert body["field"] == "Authorization"
            assert resp.headers["www-authenticate"].startswith("Bearer")
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert (await http.get(path)).status_code in (200, 503), path  # never 401


@pytest.mark.integration
async def test_the_x_api_key_header_works_like_a_bearer_token(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    resp = await http.get("/v1/audit", headers={"X-API-Key": keys.secrets["admin"]})
    assert resp.status_code == 200, resp.text


@pytest.mark.integration
async def test_an_ingest_key_cannot_post_another_tenants_events(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    own = example("user_signup", event_id="own-1", tenant="acme")
    foreign = example("user_signup", event_id="foreign-1", tenant="beta")
    resp = await http.post("/v1/events", headers=keys.headers("ingest"), json=[own, foreign])
    assert resp.status_code == 207, resp.text
    results = resp.json()["results"]
    assert results[0]["status"] == "accepted"
    assert results[1]["status"] == "rejected" and results[1]["field"] == "tenant"
    assert "'acme', not 'beta'" in results[1]["problem"]
    # an admin writes any tenant
    other = example("user_signup", event_id="foreign-2", tenant="beta")
    resp = await http.post("/v1/events", headers=keys.headers("admin"), json=[other])
    assert resp.status_code == 200 and resp.json()["accepted"] == 1, resp.text


@pytest.mark.integration
async def test_rate_limit_per_principal_answers_429_with_retry_after(
    access_settings: Settings, keys: Keys, unused_tcp_port: int, nc: object, redis_client: object
) -> None:
    settings = Settings(
        **{**access_settings.model_dump(), "rate_limits": "ingest=0.001/2,admin=100/100"}
    )
    with ApiServer(settings, unused_tcp_port) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            # content-type wrong on purpose: 415 comes after the guard, without NATS
            for _ in range(2):
                resp = await c.post("/v1/events", headers=keys.headers("ingest"), content=b"x")
                assert resp.status_code == 415, resp.text
            resp = await c.post("/v1/events", headers=keys.headers("ingest"), content=b"x")
            _assert_problem(resp, 429, "rate limit of role ingest", keys.ids["ingest"])
            assert int(resp.headers["retry-after"]) >= 1
            # another principal has its own bucket
            resp = await c.post("/v1/events", headers=keys.headers("admin"), content=b"x")
            assert resp.status_code == 415


def test_auth_off_is_refused_on_a_non_loopback_bind(tmp_path: Path) -> None:
    env = {**os.environ, "LINKPULSE_AUTH": "off", "LINKPULSE_STATE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "linkpulse", "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "LINKPULSE_AUTH=off is only allowed on a loopback address" in done.stderr


@pytest.mark.integration
async def test_auth_off_on_loopback_makes_every_caller_the_local_admin(
    access_settings: Settings, unused_tcp_port: int, nc: object, redis_client: object
) -> None:
    settings = Settings(**{**access_settings.model_dump(), "auth": "off"})
    with ApiServer(settings, unused_tcp_port) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            resp = await c.get("/v1/audit")
            assert resp.status_code == 200, resp.text


@pytest.mark.integration
async def test_a_jwt_from_the_identity_provider_opens_a_stream(
    access_settings: Settings,
    rsa_keys: tuple[Any, str],
    tmp_path: Path,
    unused_tcp_port: int,
    nc: object,
    redis_client: object,
) -> None:
    private, public_pem = rsa_keys
    (tmp_path / "idp.pem").write_text(public_pem)
    settings = Settings(
        **{
            **access_settings.model_dump(),
            "auth_jwt_public_key_file": tmp_path / "idp.pem",
            "auth_jwt_audience": "linkpulse",
            "auth_jwt_issuer": "https://idp.example",
        }
    )
    with ApiServer(settings, unused_tcp_port) as url:
        good = {"Authorization": f"Bearer {_token(private, role='viewer', seller=None)}"}
        wait_streams_ready(url, good)
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            _assert_problem(await c.get("/v1/audit", headers=good), 403, "role viewer")
            expired = _token(private, exp=int(time.time()) - 3600)
            resp = await c.get("/v1/stream/metrics", headers={"Authorization": f"Bearer {expired}"})
            _assert_problem(resp, 401, "expired")
            wrong_aud = _token(private, aud="other")
            resp = await c.get(
                "/v1/stream/metrics", headers={"Authorization": f"Bearer {wrong_aud}"}
            )
            _assert_problem(resp, 401, "audience")


async def _audit(http: httpx.AsyncClient, keys: Keys, **params: Any) -> list[dict[str, Any]]:
    resp = await http.get("/v1/audit", headers=keys.headers("admin"), params=params)
    assert resp.status_code == 200, resp.text
    entries: list[dict[str, Any]] = resp.json()["entries"]
    return entries


async def _poll_audit(
    http: httpx.AsyncClient, keys: Keys, want: int, **params: Any
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while len(entries := await _audit(http, keys, **params)) < want:
        assert time.monotonic() < deadline, f"only {len(entries)} audit entries: {entries}"
        await asyncio.sleep(0.2)
    return entries


@pytest.mark.integration
async def test_refusals_and_reads_are_in_the_audit_log(http: httpx.AsyncClient, keys: Keys) -> None:
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    assert (await http.get("/v1/audit")).status_code == 401
    assert (await http.get("/v1/audit", headers=keys.headers("viewer"))).status_code == 403
    refused = await _poll_audit(http, keys, 2, action="refused", since=since)
    by_status = {e["status"]: e for e in refused}
    assert by_status[401]["principal"] == "anonymous"
    assert by_status[403]["principal"] == keys.ids["viewer"]
    assert by_status[403]["role"] == "viewer" and by_status[403]["tenant"] == "acme"
    assert by_status[403]["resource"] == "GET /v1/audit"
    only_viewer = await _audit(http, keys, principal=keys.ids["viewer"], since=since)
    assert {e["principal"] for e in only_viewer} == {keys.ids["viewer"]}
    reads = await _poll_audit(http, keys, 1, action="audit.read")
    assert reads[0]["principal"] == keys.ids["admin"]


@pytest.mark.integration
async def test_bad_audit_filters_are_4xx_naming_the_field(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    h = keys.headers("admin")
    resp = await http.get("/v1/audit", headers=h, params={"since": "yesterday"})
    assert _assert_problem(resp, 422)["field"].endswith("since")
    resp = await http.get(
        "/v1/audit",
        headers=h,
        params={"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
    )
    assert _assert_problem(resp, 400, "since must be before until")["field"] == "since"
    resp = await http.get("/v1/audit", headers=h, params={"limit": 0})
    assert _assert_problem(resp, 422)["field"].endswith("limit")


@pytest.fixture
def cli_env(access_settings: Settings, tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {
        **os.environ,
        "LINKPULSE_DATABASE_URL": access_settings.database_url,
        "LINKPULSE_STATE_DIR": str(tmp_path),
    }


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linkpulse", "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
async def test_keys_cli_creates_lists_and_revokes_and_the_api_follows(
    http: httpx.AsyncClient, keys: Keys, cli_env: dict[str, str]
) -> None:
    made = _cli(cli_env, "create", "--role", "admin", "--tenant", "acme", "--name", "ops")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    key_id = key_id_of(secret)
    assert key_id is not None and "shown only now" in made.stderr
    listed = _cli(cli_env, "list")
    assert key_id in listed.stdout and secret not in listed.stdout
    assert (await http.get("/v1/audit", headers={"X-API-Key": secret})).status_code == 200
    revoked = _cli(cli_env, "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    deadline = time.monotonic() + 20  # the API's lookup cache is 0.5 s here
    while (await http.get("/v1/audit", headers={"X-API-Key": secret})).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key kept working"
        await asyncio.sleep(0.1)
    entries = await _poll_audit(http, keys, 2, action="key")
    assert {e["action"] for e in entries} >= {"key.create", "key.revoke"}
    assert all(e["resource"] == key_id for e in entries if e["resource"] == key_id)
    bad = _cli(cli_env, "create", "--role", "seller", "--tenant", "acme")
    assert bad.returncode == 2 and "needs a seller" in bad.stderr
    missing = _cli(cli_env, "revoke", "lp_00000000")
    assert missing.returncode == 1 and "no key 'lp_00000000'" in missing.stderr


def test_all_roles_are_covered_by_the_matrix() -> None:
    assert {KEY_SPECS[n][0] for n in ROLE_KEYS} == ALL_ROLES
