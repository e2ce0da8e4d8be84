"""Pseudonymisation without services: the keyed hash, events, dead letters, settings, decode."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkpulse.config import Settings, load_settings
from linkpulse.dataflows.chunks import Chunk
from linkpulse.dataflows.live_metrics import decode_chunk
from linkpulse.errors import ConfigError
from linkpulse.privacy import Pseudonymiser, is_pseudonym, pseudonymiser_for
from linkpulse.schemas import decode_event, encode_event
from linkpulse.schemas.events import OrderPlaced, PageView
from linkpulse.schemas.outputs import DeadLetter
from tests.test_store_writer import make_events

KEY = b"test key, 16+ bytes"
FIELDS = "user_id,properties.email,properties.ip,properties.wallet.address"
T = datetime(2026, 11, 24, 10, tzinfo=UTC)


def order(user: str = "u1", **props: object) -> OrderPlaced:
    return OrderPlaced(
        event_id="e1",
        tenant="acme",
        event_time=T,
        user_id=user,
        seller_id="s1",
        amount=10.0,
        currency="USD",
        properties={"order_id": "o1", **props},
    )


def test_same_value_same_pseudonym_within_a_key_and_different_under_another() -> None:
    p, q = Pseudonymiser(KEY, FIELDS), Pseudonymiser(b"another key 16 bytes", FIELDS)
    a, b = p.event(order("u1", email="x@y.z")), p.event(order("u1", email="x@y.z"))
    assert a.user_id == b.user_id and a.properties["email"] == b.properties["email"]
    assert is_pseudonym(a.user_id) and a.user_id != "u1"
    assert p.pseudonym("u2") != a.user_id
    assert q.event(order("u1")).user_id != a.user_id
    # the same value in another field joins: one pseudonym per value
    assert p.event(order("u9", email="u1")).properties["email"] == a.user_id
    # a fresh pseudonymiser (no cache) with the same key agrees
    assert Pseudonymiser(KEY, FIELDS).pseudonym("u1") == a.user_id


def test_event_fields_are_replaced_and_everything_else_is_kept() -> None:
    p = Pseudonymiser(KEY, FIELDS)
    ev = order(email="x@y.z", ip="10.0.0.1", wallet={"address": "0xabc", "chain": "eth"}, n=3)
    out = p.event(ev)
    assert out.properties["order_id"] == "o1" and out.properties["n"] == 3
    assert out.properties["wallet"]["chain"] == "eth"
    assert {out.properties["ip"], out.properties["wallet"]["address"]} == {
        p.pseudonym("10.0.0.1"),
        p.pseudonym("0xabc"),
    }
    raw = encode_event(out)
    for value in (b"u1", b"x@y.z", b"10.0.0.1", b"0xabc"):
        assert b'"' + value + b'"' not in raw
    # the input is not changed, and the result is a valid event (the writer may re-decode it)
    assert ev.properties["email"] == "x@y.z"
    assert decode_event(raw) == out
    assert p.event(out) == out  # idempotent: the dataflow after the API changes nothing


def test_an_event_without_pii_is_returned_as_is() -> None:
    p = Pseudonymiser(KEY, "properties.email")
    ev = PageView(event_id="e1", tenant="acme", event_time=T, properties={"page": "home"})
    assert p.event(ev) is ev
    with_user = order("u1")
    assert p.event(with_user) is with_user  # user_id not configured: stays raw


def test_non_string_values_are_hashed_as_their_json() -> None:
    p = Pseudonymiser(KEY, "properties.ip")
    out = p.event(order(ip=[10, 0, 0, 1]))
    assert out.properties["ip"] == p.pseudonym([10, 0, 0, 1]) == p.pseudonym("[10,0,0,1]")
    assert p.event(order(ip=None)).properties["ip"] is None


def test_dead_letter_payloads_are_pseudonymised_or_withheld() -> None:
    p = Pseudonymiser(KEY, FIELDS)
    bad = json.dumps({"type": "order_placed", "user_id": 42, "properties": {"email": "x@y.z"}})
    letter = DeadLetter(
        payload=bad, field="amount", problem="missing", source="nats", received_at=T
    )
    out = p.letter(letter)
    parsed = json.loads(out.payload)
    assert parsed["user_id"] == p.pseudonym(42) and parsed["properties"]["email"] != "x@y.z"
    assert "x@y.z" not in out.payload
    # unparseable: withheld, with its size and a keyed digest
    broken = p.letter(msgspec.structs.replace(letter, payload='{"user_id": "u1", "x": '))
    assert "u1" not in broken.payload and "withheld" in broken.payload
    assert p.payload('[{"user_id": "u1"}]').startswith("[withheld")
    # nothing to replace: kept byte for byte
    assert p.letter(msgspec.structs.replace(letter, payload='{"type": "x"}')).payload == (
        '{"type": "x"}'
    )


def test_a_pii_value_quoted_in_the_problem_is_withheld() -> None:
    p = Pseudonymiser(KEY, "properties.provider")
    letter = DeadLetter(
        payload="{}",
        field="properties.provider",
        problem="expected a non-empty string, got 'secret'",
        source="http",
        received_at=T,
    )
    assert p.letter(letter).problem == "expected a non-empty string, got a value withheld (PII)"


@settings(max_examples=60, deadline=None)
@given(
    st.text(min_size=3).filter(lambda s: not s.isspace()),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
def test_no_raw_value_survives_in_a_dead_letter(value: str, extra: dict[str, str]) -> None:
    p = Pseudonymiser(KEY, FIELDS)
    payload = json.dumps({"user_id": value, "properties": {**extra, "email": value}})
    out = p.payload(payload)
    assert json.loads(out)["user_id"] == p.pseudonym(value)
    assert json.loads(out)["properties"]["email"] == p.pseudonym(value)


def test_the_settings_require_a_key_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="LINKPULSE_PRIVACY_KEY: .*required"):
        load_settings(privacy_pii_fields="user_id", _env_file=None)
    with pytest.raises(ConfigError, match="LINKPULSE_PRIVACY_KEY"):
        load_settings(privacy_pii_fields="user_id", privacy_key="short", _env_file=None)
    with pytest.raises(ConfigError, match="LINKPULSE_PRIVACY_PII_FIELDS: .*seller_id"):
        load_settings(privacy_pii_fields="seller_id", privacy_key="k" * 16, _env_file=None)
    with pytest.raises(ConfigError, match="LINKPULSE_PRIVACY_PII_FIELDS: .*'properties'"):
        load_settings(privacy_pii_fields="properties", privacy_key="k" * 16, _env_file=None)
    # keep-raw: no key needed, nothing pseudonymised
    kept = load_settings(privacy_pii_fields="user_id", privacy_keep_raw=True, _env_file=None)
    assert pseudonymiser_for(kept) is None
    assert pseudonymiser_for(Settings(_env_file=None)) is None  # type: ignore[call-arg]
    # the key is never shown by `config show`
    s = Settings(privacy_pii_fields="user_id", privacy_key="k" * 16)
    assert "k" * 16 not in str(s.privacy_key) and "k" * 16 not in repr(s)


def _chunk(*payloads: bytes) -> Chunk:
    now = int(T.timestamp() * 1e9)
    return Chunk("p0", now, [(b, "lp.events.acme.x", i + 1, now) for i, b in enumerate(payloads)])


def test_the_decode_step_pseudonymises_events_and_dead_letters() -> None:
    good = encode_event(order("alice", email="a@example.com"))
    bad = b'{"type": "order_placed", "user_id": "alice", "properties": {"email": "a@example.com"}}'
    p = Pseudonymiser(KEY, FIELDS)
    plain = decode_chunk(_chunk(good, bad))
    assert plain.events[0].user_id == "alice"  # no privacy: as before
    d = decode_chunk(_chunk(good, bad), privacy=p)
    assert [ev.user_id for ev in d.events] == [p.pseudonym("alice")]
    assert d.events[0].properties["email"] == p.pseudonym("a@example.com")
    assert len(d.letters) == 1 and d.letters[0].sequence == 2
    assert "alice" not in d.letters[0].payload and "a@example.com" not in d.letters[0].payload
    assert p.pseudonym("alice") in d.letters[0].payload  # still findable by erase


def test_the_cache_is_bounded_and_gives_the_same_pseudonyms() -> None:
    p = Pseudonymiser(KEY, "user_id", cache_size=10)
    first = [p.pseudonym(f"u{i}") for i in range(25)]
    assert len(p._cache) <= 10
    assert [p.pseudonym(f"u{i}") for i in range(25)] == first
    assert first == [Pseudonymiser(KEY, "user_id").pseudonym(f"u{i}") for i in range(25)]


def test_the_batch_path_equals_the_one_event_path() -> None:
    evs = make_events(300, seed=5)
    evs = [
        order(f"u{i % 7}", email=f"m{i % 5}", ip=i) if i % 4 == 0 else e for i, e in enumerate(evs)
    ]
    for fields in ("user_id", "properties.email", FIELDS):
        p = Pseudonymiser(KEY, fields)
        assert p.events(evs) == [Pseudonymiser(KEY, fields).event(e) for e in evs], fields
