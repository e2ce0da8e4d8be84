"""Event schemas: every type accepted, every kind of bad field named, nothing else raised."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from linkpulse.cli import app as cli_app
from linkpulse.errors import SchemaValidationError
from linkpulse.schemas import (
    EVENT_CLASS_BY_TYPE,
    EVENT_TYPES,
    decode_event,
    encode_event,
    event_json_schema,
    jsonarray,
    split_batch,
    validate_event,
)
from linkpulse.schemas.events import PROPERTY_RULES
from linkpulse.schemas.jsonarray import split_array
from tests.event_examples import EVENT_TIME, all_examples, example

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def _raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _rejected(raw: bytes | dict[str, Any], *, now: datetime | None = None) -> SchemaValidationError:
    with pytest.raises(SchemaValidationError) as info:
        if isinstance(raw, dict):
            validate_event(raw, now=now)
        else:
            decode_event(raw, now=now)
    return info.value


# -- valid events -------------------------------------------------------------------------


def test_the_examples_cover_every_type() -> None:
    assert sorted(ev["type"] for ev in all_examples()) == sorted(EVENT_TYPES)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_type_is_accepted_and_round_trips(event_type: str) -> None:
    raw = _raw(example(event_type))
    ev = decode_event(raw, now=NOW)
    assert type(ev) is EVENT_CLASS_BY_TYPE[event_type]
    assert ev.type == event_type
    assert ev.event_time == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    again = decode_event(encode_event(ev))
    assert again == ev
    assert encode_event(again) == encode_event(ev)
    # validate_event (already-parsed JSON) agrees with decode_event (bytes)
    assert validate_event(json.loads(raw)) == ev


def test_offsets_other_than_utc_are_accepted_as_the_same_instant() -> None:
    ev = decode_event(_raw(example("page_view", event_time="2026-11-24T12:00:00+02:00")))
    assert ev.event_time == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def test_event_time_within_the_allowed_skew_is_accepted() -> None:
    soon = (NOW + timedelta(minutes=4)).isoformat()
    assert decode_event(_raw(example("page_view", event_time=soon)), now=NOW).tenant == "acme"


# -- bad fields: each rejected with the field and the reason -------------------------------

BAD_FIELDS: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, overrides on an order_placed example, field, substring of the problem)
    ("wrong type", {"event_id": 5}, "event_id", "Expected `str`"),
    ("empty event id", {"event_id": ""}, "event_id", "length"),
    ("bad tenant", {"tenant": "ACME Corp"}, "tenant", "regex"),
    ("naive datetime", {"event_time": "2026-11-24T10:00:00"}, "event_time", "timezone"),
    ("not a datetime", {"event_time": "yesterday"}, "event_time", "datetime"),
    ("negative amount", {"amount": -1}, "amount", ">= 0"),
    ("amount too large", {"amount": 1e13}, "amount", "<="),
    ("bad currency", {"currency": "usd"}, "currency", "regex"),
    ("unknown type", {"type": "order_shipped"}, "type", "expected one of"),
    ("unknown top-level field", {"colour": "red"}, "colour", "unknown field"),
    ("schema_version 2", {"schema_version": 2}, "schema_version", "2"),
    ("properties not an object", {"properties": [1]}, "properties", "Expected `object`"),
    ("user id with spaces", {"user_id": "u 1"}, "user_id", "regex"),
    ("seller id with spaces", {"seller_id": "s 1"}, "seller_id", "regex"),
    ("event id with a slash", {"event_id": "e/1"}, "event_id", "regex"),
    ("tenant with a trailing space", {"tenant": "acme "}, "tenant", "regex"),
]


@pytest.mark.parametrize(
    ("overrides", "field", "problem"),
    [case[1:] for case in BAD_FIELDS],
    ids=[case[0] for case in BAD_FIELDS],
)
def test_bad_field_is_named_with_the_problem(
    overrides: dict[str, Any], field: str, problem: str
) -> None:
    ev = example("order_placed", **overrides)
    for err in (_rejected(_raw(ev)), _rejected(ev)):
        assert err.field == field
        assert problem in err.problem
        assert str(err) == f"{field}: {err.problem}"


@pytest.mark.parametrize("name", ["event_id", "event_time", "tenant", "type"])
def test_missing_envelope_field(name: str) -> None:
    ev = example("page_view")
    del ev[name]
    err = _rejected(_raw(ev))
    assert err.field == name
    assert "missing required field" in err.problem


@pytest.mark.parametrize(
    ("event_type", "name"),
    [("order_placed", "seller_id"), ("user_signup", "user_id"), ("listing_created", "seller_id")],
)
def test_missing_field_required_by_the_type(event_type: str, name: str) -> None:
    ev = example(event_type)
    del ev[name]
    err = _rejected(_raw(ev))
    assert err.field == name
    assert "missing required field" in err.problem


def test_infinite_amount_is_rejected() -> None:
    # JSON has no infinity literal; 1e999 overflows to it when decoded.
    raw = _raw(example("order_placed")).replace(b"25.5", b"1e999")
    assert _rejected(raw).field == "amount"
    assert _rejected(example("order_placed", amount=math.inf)).field == "amount"
    assert _rejected(example("order_placed", amount=math.nan)).field == "amount"


def test_amount_without_currency_is_rejected() -> None:
    err = _rejected(_raw(example("page_view", amount=3.0)))
    assert err.field == "currency"
    assert "go together" in err.problem
    err = _rejected(_raw(example("page_view", currency="EUR")))
    assert err.field == "amount"


@pytest.mark.parametrize(
    ("event_type", "key"),
    [(t, rule[0]) for t, rules in PROPERTY_RULES.items() for rule in rules],
)
def test_missing_required_property(event_type: str, key: str) -> None:
    ev = example(event_type)
    del ev["properties"][key]
    err = _rejected(_raw(ev))
    assert err.field == f"properties.{key}"
    assert f"required for {event_type}" in err.problem


INVALID_PROPERTIES = [
    ("page_view", "page", "nowhere"),
    ("page_view", "page", 3),
    ("review_posted", "rating", 6),
    ("review_posted", "rating", 0),
    ("review_posted", "rating", True),
    ("review_posted", "rating", "5"),
    ("review_posted", "rating", 4.5),
    ("listing_created", "listing_id", ""),
    ("order_placed", "order_id", 17),
    ("wallet_connected", "provider", None),
]


@pytest.mark.parametrize(("event_type", "key", "value"), INVALID_PROPERTIES)
def test_invalid_required_property(event_type: str, key: str, value: Any) -> None:
    ev = example(event_type)
    ev["properties"][key] = value
    err = _rejected(_raw(ev))
    assert err.field == f"properties.{key}"
    assert err.problem.startswith("expected ")


def test_future_event_time_is_rejected_only_with_now() -> None:
    later = (NOW + timedelta(hours=1)).isoformat()
    raw = _raw(example("page_view", event_time=later))
    err = _rejected(raw, now=NOW)
    assert err.field == "event_time"
    assert "in the future" in err.problem
    assert decode_event(raw).event_id == "ev-page_view"  # no clock, no skew check


@pytest.mark.parametrize("raw", [b"[1]", b"1", b'"event"', b"null", b"true", b"[]"])
def test_non_object_json_is_rejected_at_the_root(raw: bytes) -> None:
    err = _rejected(raw)
    assert err.field == "$"
    assert "Expected `object`" in err.problem


@pytest.mark.parametrize("raw", [b"", b"{", b'{"type": "page_view",}', b"\xff\xfe", b"nan"])
def test_malformed_json_is_rejected_at_the_root(raw: bytes) -> None:
    err = _rejected(raw)
    assert err.field == "$"
    assert err.problem.startswith("malformed JSON")


def test_split_batch_keeps_items_raw_and_rejects_non_arrays() -> None:
    good = _raw(example("page_view"))
    assert split_batch(b"[" + good + b" , " + good + b"]", "application/json") == [good, good]
    assert split_batch(good + b"\n\n" + good + b"\r\n", "application/x-ndjson") == [good, good]
    assert _field(lambda: split_batch(good, "application/json")) == "$"
    assert _field(lambda: split_batch(b"[", "application/json")) == "$"


def _field(call: Any) -> str:
    with pytest.raises(SchemaValidationError) as info:
        call()
    return info.value.field


def test_event_time_example_constant_is_what_the_examples_use() -> None:
    assert (
        decode_event(_raw(example("page_view"))).event_time.isoformat().startswith(EVENT_TIME[:19])
    )


# -- fuzzing: nothing but SchemaValidationError, whatever the input ------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
FIELD_NAMES = [
    "type",
    "event_id",
    "event_time",
    "tenant",
    "schema_version",
    "user_id",
    "seller_id",
    "amount",
    "currency",
    "properties",
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_schema_errors(call: Any) -> None:
    try:
        call()
    except SchemaValidationError as e:
        assert isinstance(e.field, str) and e.field
        assert isinstance(e.problem, str) and e.problem


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    _only_schema_errors(lambda: decode_event(raw, now=NOW))


@FUZZ
@given(json_values)
def test_fuzz_arbitrary_json_values(value: Any) -> None:
    _only_schema_errors(lambda: validate_event(value, now=NOW))
    try:
        raw = msgspec.json.encode(value)
    except (OverflowError, ValueError, TypeError):
        return  # not representable as JSON (huge int, ...): nothing to decode
    _only_schema_errors(lambda: decode_event(raw, now=NOW))


@FUZZ
@given(
    st.sampled_from(EVENT_TYPES),
    st.sampled_from([*FIELD_NAMES, "properties.x", "extra"]),
    st.one_of(st.just("__delete__"), json_values),
)
def test_fuzz_mutated_valid_events(event_type: str, name: str, value: Any) -> None:
    ev = example(event_type)
    if name.startswith("properties."):
        key = (PROPERTY_RULES.get(event_type) or (("x",),))[0][0]
        if value == "__delete__":
            ev["properties"].pop(key, None)
        else:
            ev["properties"][key] = value
    elif value == "__delete__":
        ev.pop(name, None)
    else:
        ev[name] = value
    _only_schema_errors(lambda: validate_event(ev, now=NOW))
    try:
        raw = msgspec.json.encode(ev)
    except (OverflowError, ValueError, TypeError):
        return
    _only_schema_errors(lambda: decode_event(raw, now=NOW))
    # and byte-level damage to a valid event
    for cut in (len(raw) // 2, len(raw) - 1):
        _only_schema_errors(lambda cut=cut: decode_event(raw[:cut], now=NOW))


# -- the `linkpulse schema` commands ----------------------------------------------------------


def test_schema_export_writes_the_event_json_schema(tmp_path: Path) -> None:
    out = tmp_path / "event.schema.json"
    result = CliRunner().invoke(cli_app, ["schema", "export", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == event_json_schema()
    printed = CliRunner().invoke(cli_app, ["schema", "export"])
    assert json.loads(printed.stdout) == event_json_schema()


def test_schema_validate_reports_each_bad_line(tmp_path: Path) -> None:
    lines = [
        json.dumps(example("page_view")),
        "",
        json.dumps(example("order_placed", currency="usd")),
        "{not json",
        json.dumps(example("review_posted")),
    ]
    path = tmp_path / "events.ndjson"
    path.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(cli_app, ["schema", "validate", str(path)])
    assert result.exit_code == 1
    bad = result.stdout.strip().splitlines()
    assert bad[0].startswith(f"{path}:3: currency: ")
    assert bad[1].startswith(f"{path}:4: $: malformed JSON")
    assert len(bad) == 2
    assert "4 event(s) (ndjson): 2 valid, 2 invalid" in result.stderr


def test_schema_validate_locates_items_of_a_json_array(tmp_path: Path) -> None:
    items = [example("page_view"), example("page_view", tenant="Bad Tenant")]
    path = tmp_path / "events.json"
    path.write_text(json.dumps(items, indent=2))
    result = CliRunner().invoke(cli_app, ["schema", "validate", str(path)])
    assert result.exit_code == 1
    line = json.dumps(items, indent=2).splitlines().index("  {", 2) + 1
    assert result.stdout.startswith(f"{path}:{line}: tenant: ")


def test_schema_validate_passes_a_good_file_and_refuses_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "ok.ndjson"
    path.write_text("\n".join(json.dumps(ev) for ev in all_examples()))
    result = CliRunner().invoke(cli_app, ["schema", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{len(all_examples())} valid" in result.stderr
    missing = CliRunner().invoke(cli_app, ["schema", "validate", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "cannot read" in missing.stderr


def test_schema_validate_survives_deeply_nested_json(tmp_path: Path) -> None:
    path = tmp_path / "deep.ndjson"
    path.write_bytes(
        json.dumps(example("page_view")).encode()
        + b'\n{"properties": '
        + b"[" * 20_000
        + b"]" * 20_000
        + b"}"
    )
    result = CliRunner().invoke(cli_app, ["schema", "validate", str(path)])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{path}:2: $: JSON nested too deeply")


def test_schema_validate_judges_each_item_of_an_array_with_a_deep_or_malformed_one(
    tmp_path: Path,
) -> None:
    good = json.dumps(example("page_view")).encode()
    deep = b'{"properties": ' + b"[" * 60_000 + b"]" * 60_000 + b"}"
    path = tmp_path / "mixed.json"
    path.write_bytes(b"[" + good + b",\n" + deep + b",\n{nope},\n" + good + b"]")
    result = CliRunner().invoke(cli_app, ["schema", "validate", str(path)])
    assert result.exit_code == 1
    bad = result.stdout.strip().splitlines()
    assert bad[0].startswith(f"{path}:2: $: JSON nested too deeply"), bad
    assert bad[1].startswith(f"{path}:3: $: malformed JSON"), bad
    assert "4 event(s) (json-array): 2 valid, 2 invalid" in result.stderr
    path.write_bytes(b"[" + good + b",\n" + good + b",\n]")
    broken = CliRunner().invoke(cli_app, ["schema", "validate", str(path)])
    assert broken.stdout.startswith(f"{path}:3: $: JSON array: malformed JSON: an empty item")


@pytest.mark.parametrize("depth", [5_000, 60_000])
def test_deeply_nested_json_is_a_validation_error_not_a_crash(depth: int) -> None:
    body = b'{"properties": ' + b"[" * depth + b"]" * depth + b"}"
    assert "nested too deeply" in _rejected(body).problem
    # in a JSON array the deep item is one item like any other (as an NDJSON line is):
    # the others are still split out, and only it is rejected when decoded
    good = _raw(example("page_view"))
    items = split_batch(b"[" + good + b", " + body + b",\n" + good + b"]", "application/json")
    assert items == [good, body, good]


def test_a_non_string_property_key_is_named() -> None:
    with pytest.raises(SchemaValidationError) as info:
        validate_event({**example("page_view"), "properties": {1: "x", "page": "home"}})
    assert info.value.field == "properties"


@pytest.mark.parametrize(
    ("properties", "field", "words"),
    [
        ({"page": "home", "note": "a\x00b"}, "properties.note", "contains a NUL"),
        ({"page": "home", "a\x00b": 1}, "properties.a\\u0000b", "the key contains a NUL"),
        ({"page": "home", "tags": ["x", {"k": "\x00"}]}, "properties.tags[1].k", "NUL"),
    ],
    ids=["value", "key", "nested"],
)
def test_a_nul_character_is_rejected_naming_the_property(
    properties: dict[str, Any], field: str, words: str
) -> None:
    # PostgreSQL can't store NUL in text or jsonb: refuse it at the door, saying where.
    err = _rejected(_raw({**example("page_view"), "properties": properties}))
    assert (err.field, words in err.problem) == (field, True), err
    assert _rejected(_raw({**example("page_view"), "user_id": "u\x00"})).field == "user_id"


def test_an_escaped_backslash_u0000_is_not_a_nul() -> None:
    text = {**example("page_view"), "properties": {"page": "home", "note": "\\u0000"}}
    assert decode_event(json.dumps(text).encode()).properties["note"] == "\\u0000"


def test_string_formats_are_published_in_the_json_schema() -> None:
    # Checked after decoding (not by msgspec), but still part of the contract.
    text = json.dumps(event_json_schema())
    for pattern in ("^[a-z0-9][a-z0-9_-]{0,62}$", "^[A-Z]{3}$", "^[^\\s]+$"):
        assert json.dumps(pattern) in text


def test_remembered_valid_values_never_let_an_invalid_one_through() -> None:
    good = example("order_placed")
    for i in range(50):  # fill the memory of valid tenants, users and sellers
        decode_event(_raw({**good, "tenant": f"t{i}", "user_id": f"u{i}", "seller_id": f"s{i}"}))
    for overrides, field in (
        ({"tenant": "T1"}, "tenant"),
        ({"user_id": "u 1"}, "user_id"),
        ({"seller_id": "s\t1"}, "seller_id"),
        ({"currency": "usd"}, "currency"),
    ):
        with pytest.raises(SchemaValidationError) as err:
            decode_event(_raw({**good, **overrides}))
        assert err.value.field == field


# -- event_time bounds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "when",
    [
        "0001-01-01T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "1999-12-31T23:59:59.999999Z",
        "2000-01-01T00:30:00+01:00",
    ],
)
def test_an_event_time_before_2000_is_rejected_naming_the_bound(when: str) -> None:
    err = _rejected(_raw(example("page_view", event_time=when)))
    assert err.field == "event_time"
    assert "before 2000-01-01T00:00:00+00:00" in err.problem
    assert when[:10] in err.problem


def test_the_earliest_accepted_event_time_is_2000_01_01_utc() -> None:
    for when in ("2000-01-01T00:00:00Z", "2000-01-01T01:00:00+01:00"):
        assert decode_event(_raw(example("page_view", event_time=when))).event_time.year >= 1999


def test_an_event_time_past_the_last_utc_instant_is_rejected_even_without_a_clock() -> None:
    # 9999-12-31T23:59-23:59 is in year 10000 in UTC: no datetime can hold it
    err = _rejected(_raw(example("page_view", event_time="9999-12-31T23:59:00-23:59")))
    assert (err.field, "last representable" in err.problem) == ("event_time", True)
    assert decode_event(_raw(example("page_view", event_time="9999-12-31T23:59:00Z")))


# -- echoed names and values are bounded ----------------------------------------------------


def test_a_huge_unknown_field_or_property_value_gives_a_short_reason() -> None:
    unknown = _rejected(_raw({**example("page_view"), "x" * 100_000: 1}))
    assert unknown.field.startswith("xxx") and "100000 characters" in unknown.field
    assert len(unknown.field) < 200 and len(unknown.problem) < 400
    value = _rejected(_raw(example("page_view", properties={"page": "p" * 100_000})))
    assert value.field == "properties.page"
    assert "100002 characters" in value.problem and len(value.problem) < 400


# -- splitting a JSON array: the iterative scanner against json.loads ------------------------

finite_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    # the bytes the scanner's string and escape handling is about, often
    | st.text(alphabet='\\"[]{},: ', max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
SEPARATORS = [(",", ":"), (", ", ": "), (" ,\t", " :\r\n"), ("\n,\n", ":")]
# Bytes that change a document's structure, or are JSON whitespace or almost (\x0c).
MUTATION_BYTES = st.sampled_from(list(b'[]{},:"\\ \t\n\x0c1a'))


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _loads(doc: bytes) -> Any:
    """json.loads reading JSON as msgspec does: UTF-8 only, no NaN or Infinity."""
    return json.loads(doc.decode("utf-8"), parse_constant=_no_constant)


def _loads_or_none(doc: bytes) -> tuple[bool, Any]:
    try:
        return True, _loads(doc)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False, None


@FUZZ
@given(
    st.lists(finite_values, max_size=6),
    st.sampled_from([None, 0, 2]),
    st.sampled_from(SEPARATORS),
    st.booleans(),
)
def test_the_scanner_splits_every_json_array_like_json_loads_and_msgspec(
    values: list[Any], indent: int | None, separators: tuple[str, str], ascii_only: bool
) -> None:
    doc = json.dumps(values, indent=indent, separators=separators, ensure_ascii=ascii_only)
    raw = f" \r\n{doc}\t ".encode()
    items = jsonarray._scan(raw)
    assert [_loads(item) for item in items] == values
    assert items == split_array(raw)  # the same bytes as msgspec's fast path


@FUZZ
@given(st.lists(finite_values, max_size=5), st.data())
def test_the_scanner_never_passes_a_broken_array_as_good_items(
    values: list[Any], data: st.DataObject
) -> None:
    doc = bytearray(json.dumps(values, separators=data.draw(st.sampled_from(SEPARATORS))).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(doc)))
        match data.draw(st.sampled_from(["insert", "delete", "replace"])):
            case "insert":
                doc[at:at] = bytes([data.draw(MUTATION_BYTES)])
            case "delete":
                del doc[at : at + 1]
            case "replace":
                doc[at : at + 1] = bytes([data.draw(MUTATION_BYTES)])
    raw = bytes(doc)
    valid, expected = _loads_or_none(raw)
    try:
        items: list[bytes] | None = jsonarray._scan(raw)
    except SchemaValidationError as e:
        assert e.field == "$" and e.problem
        items = None
    if valid and isinstance(expected, list):
        assert items is not None, raw  # a valid array is always split
        assert [_loads(item) for item in items] == expected
    if items is not None and all(_loads_or_none(item)[0] for item in items):
        assert valid and expected == [_loads(item) for item in items], raw  # and never invented


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[1,]", "an empty item"),
        (b"[,1]", "an empty item"),
        (b"[1,,2]", "an empty item"),
        (b"[1] x", "data after the array"),
        (b"[1][2]", "data after the array"),
        (b"[1, [2]", "not closed"),
        (b'["a]', "string is not closed"),
        (b"[}", "closed by '}'"),
        (b'[1, {"a": 2}}', "closed by '}'"),
        (b'{"a": [1]}', "expected a JSON array"),
        (b"", "expected a JSON array"),
        (b"\x0c[1]", "expected a JSON array"),  # form feed is not JSON whitespace
    ],
)
def test_an_array_whose_items_cannot_be_told_apart_is_refused_whole(
    body: bytes, words: str
) -> None:
    err = _rejected_split(body)
    assert (err.field, words in err.problem) == ("$", True), err


def _rejected_split(body: bytes) -> SchemaValidationError:
    with pytest.raises(SchemaValidationError) as info:
        split_array(body)
    return info.value


def test_a_malformed_item_is_that_items_problem_only() -> None:
    good = _raw(example("page_view"))
    body = b"[" + good + b', {"type": nope}, 1 2, {"a": [1}], ' + good + b"]"
    items = split_batch(body, "application/json")
    assert items == [good, b'{"type": nope}', b"1 2", b'{"a": [1}]', good]
    assert [_rejected(item).field for item in items[1:4]] == ["$", "$", "$"]


def test_the_scanner_is_not_slowed_by_depth_or_by_many_tiny_items() -> None:
    # No Python loop per byte: a 5 MiB body of brackets or of tiny items is one
    # vectorised pass (asserted by outcome, not time: the pass finishes at all, and
    # the item cap stops a huge count before any item is cut)
    size = 5 * 1024 * 1024
    assert jsonarray._scan(b"[" + b"[" * size + b"]" * size + b"]") == [b"[" * size + b"]" * size]
    with pytest.raises(jsonarray.TooManyItemsError) as info:
        jsonarray._scan(b"[" + b"1," * size + b"]", max_items=1000)
    assert info.value.count == size + 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("tenant", "acme\n"), ("event_id", "e1\n"), ("user_id", "u1\n"), ("currency", "USD\n")],
)
def test_a_trailing_newline_does_not_pass_a_string_format(field: str, value: str) -> None:
    # re.search's "$" matches before a final "\n": "acme\n" passed as a tenant
    err = _rejected(_raw(example("order_placed", **{field: value})))
    assert (err.field, "matching regex" in err.problem) == (field, True), err
