"""The streaming result formats: each round-trips through polars, types kept, memory bounded."""

from __future__ import annotations

import datetime as dt
import io
import random
import subprocess
import sys
import tracemalloc
import uuid
from decimal import Decimal
from typing import Any

import orjson
import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linkpulse.api.problems import ProblemError
from linkpulse.formats import (
    FORMATS,
    Column,
    columns_from_description,
    media_type,
    negotiate,
    open_writer,
)
from linkpulse.formats.loaders import use_format_loaders
from linkpulse.formats.parquet import ParquetRowWriter
from tests.fix_db import ADMIN_DSN

SEED = 20261201

COLUMNS = [
    Column("id", "int8"),
    Column("small", "int2"),
    Column("flag", "bool"),
    Column("ratio", "float8"),
    Column("amount", "numeric(12,2)"),
    Column("gmv", "numeric"),
    Column("at", "timestamptz"),
    Column("day", "date"),
    Column("name", "text"),
    Column("props", "jsonb"),
    Column("tags", "text[]"),
    Column("ref", "uuid"),
]


def make_rows(n: int, seed: int = SEED) -> list[tuple[Any, ...]]:
    rnd = random.Random(seed)
    base = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    rows = []
    for i in range(n):
        rows.append(
            (
                i,
                rnd.randint(-300, 300),
                rnd.random() < 0.5,
                rnd.random(),
                Decimal(rnd.randint(0, 10**8)) / 100,
                None if i % 7 == 0 else Decimal(rnd.randint(0, 10**6)) / 1000,
                base + dt.timedelta(microseconds=rnd.randint(0, 10**11)),
                dt.date(2026, 1, 1) + dt.timedelta(days=rnd.randint(0, 300)),
                None if i % 5 == 0 else f'name, "{i}"\n',
                {"k": i, "s": "x"},
                [f"t{j}" for j in range(i % 3)],
                uuid.UUID(int=rnd.getrandbits(128)),
            )
        )
    return rows


def expected_frame(rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    """What every format must give back: the rows as polars types (numeric bare -> f64)."""
    cols = list(zip(*rows, strict=True))
    return pl.DataFrame(
        {
            "id": pl.Series(cols[0], dtype=pl.Int64),
            "small": pl.Series(cols[1], dtype=pl.Int16),
            "flag": pl.Series(cols[2], dtype=pl.Boolean),
            "ratio": pl.Series(cols[3], dtype=pl.Float64),
            "amount": pl.Series(cols[4], dtype=pl.Decimal(12, 2)),
            "gmv": pl.Series([None if v is None else float(v) for v in cols[5]], dtype=pl.Float64),
            "at": pl.Series(cols[6], dtype=pl.Datetime("us", "UTC")),
            "day": pl.Series(cols[7], dtype=pl.Date),
            "name": pl.Series(cols[8], dtype=pl.String),
            "props": pl.Series([orjson.dumps(v).decode() for v in cols[9]], dtype=pl.String),
            "tags": pl.Series(cols[10], dtype=pl.List(pl.String)),
            "ref": pl.Series([str(v) for v in cols[11]], dtype=pl.String),
        }
    )


def write_all(fmt: str, rows: list[tuple[Any, ...]], batch: int, **kw: Any) -> bytes:
    w = open_writer(fmt, COLUMNS, watermark={"principal": "ana", "at": "2026-12-01T11:00:00Z"})
    out = [w.write(rows[i : i + batch]) for i in range(0, len(rows), batch)]
    out.append(w.close(**kw))
    return b"".join(out)


def test_parquet_round_trip_keeps_types_and_metadata() -> None:
    rows = make_rows(3000)
    data = write_all("parquet", rows, 700, summary={"truncated": False})
    got = pl.read_parquet(io.BytesIO(data))
    assert got.equals(expected_frame(rows)), f"seed {SEED}"
    meta = pq.ParquetFile(io.BytesIO(data)).metadata.metadata
    assert orjson.loads(meta[b"linkpulse.watermark"])["principal"] == "ana"
    assert orjson.loads(meta[b"linkpulse.summary"]) == {"rows": 3000, "truncated": False}
    assert [c["type"] for c in orjson.loads(meta[b"linkpulse.columns"])][:5] == [
        "int8",
        "int2",
        "bool",
        "float8",
        "numeric(12,2)",
    ]
    schema = pq.read_schema(io.BytesIO(data))
    assert schema.field("props").metadata == {b"pg_type": b"jsonb"}
    assert schema.field("at").type == pa.timestamp("us", tz="UTC")


def _polars_cast(frame: pl.DataFrame) -> pl.DataFrame:
    """Text formats carry no types: cast by the header's pg types, as a client would."""
    return frame.with_columns(
        pl.col("small").cast(pl.Int16),
        pl.col("amount").cast(pl.String).cast(pl.Decimal(12, 2)),
        pl.col("at").str.to_datetime(time_unit="us", time_zone="UTC"),
        pl.col("day").str.to_date(),
    )


def test_csv_round_trip_with_comment_lines() -> None:
    rows = make_rows(2000)
    data = write_all("csv", rows, 300, summary={"truncated": True})
    lines = data.decode().splitlines()
    head = orjson.loads(lines[0].removeprefix("# linkpulse "))
    assert head["watermark"]["principal"] == "ana"
    assert head["columns"][4] == {"name": "amount", "type": "numeric(12,2)"}
    assert orjson.loads(lines[-1].removeprefix("# linkpulse ")) == {
        "summary": {"rows": 2000, "truncated": True}
    }
    got = pl.read_csv(
        io.BytesIO(data),
        comment_prefix="#",
        schema_overrides={"amount": pl.String, "at": pl.String, "day": pl.String},
    )
    got = _polars_cast(got).with_columns(pl.col("tags").str.json_decode(pl.List(pl.String)))
    exp = expected_frame(rows)
    assert got.equals(exp), f"seed {SEED}"
    # exact text of the numeric, as PostgreSQL printed it
    assert lines[2].split(",")[4] == str(rows[0][4])


def test_jsonl_round_trip_with_header_and_summary() -> None:
    rows = make_rows(2000)
    data = write_all("jsonl", rows, 300, summary={"truncated": False})
    lines = data.splitlines()
    assert orjson.loads(lines[0])["@linkpulse"]["watermark"]["principal"] == "ana"
    assert orjson.loads(lines[-1]) == {
        "@linkpulse": {"summary": {"rows": 2000, "truncated": False}}
    }
    body = b"\n".join(lines[1:-1])
    schema: dict[str, pl.DataType] = {
        "id": pl.Int64(),
        "small": pl.Int64(),
        "flag": pl.Boolean(),
        "ratio": pl.Float64(),
        "amount": pl.Float64(),
        "gmv": pl.Float64(),
        "at": pl.String(),
        "day": pl.String(),
        "name": pl.String(),
        "props": pl.Struct({"k": pl.Int64, "s": pl.String}),
        "tags": pl.List(pl.String),
        "ref": pl.String(),
    }
    got = pl.read_ndjson(io.BytesIO(body), schema=schema)
    got = _polars_cast(got).with_columns(pl.col("props").struct.json_encode())
    assert got.equals(expected_frame(rows)), f"seed {SEED}"


def test_json_document_is_one_valid_object() -> None:
    rows = make_rows(50)
    doc = orjson.loads(write_all("json", rows, 7, summary={"truncated": False}))
    assert doc["watermark"]["principal"] == "ana"
    assert [c["name"] for c in doc["columns"]] == [c.name for c in COLUMNS]
    assert len(doc["rows"]) == 50 and doc["summary"] == {"rows": 50, "truncated": False}
    assert doc["rows"][3]["amount"] == float(rows[3][4])
    assert doc["rows"][3]["tags"] == rows[3][10]


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_result_is_still_well_formed(fmt: str) -> None:
    data = write_all(fmt, [], 10, summary={"truncated": False})
    if fmt == "parquet":
        assert pl.read_parquet(io.BytesIO(data)).columns == [c.name for c in COLUMNS]
    elif fmt == "json":
        assert orjson.loads(data)["rows"] == []
    else:
        assert data.decode().count("\n") == (3 if fmt == "csv" else 2)


def test_repeated_names_are_made_unique() -> None:
    w = open_writer("jsonl", [Column("a", "int4"), Column("a", "int4")])
    lines = (w.write([(1, 2)]) + w.close()).splitlines()
    assert orjson.loads(lines[1]) == {"a": 1, "a_2": 2}


def test_unknown_format_and_write_after_close() -> None:
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        open_writer("xml", COLUMNS)
    w = open_writer("csv", COLUMNS)
    w.close()
    with pytest.raises(ValueError, match="after close"):
        w.write([])


@pytest.mark.parametrize(
    ("accept", "param", "fmt"),
    [
        (None, None, "jsonl"),
        ("*/*", None, "jsonl"),
        ("text/csv", None, "csv"),
        ("application/vnd.apache.parquet", None, "parquet"),
        ("application/json;q=0.2, application/x-ndjson;q=0.8", None, "jsonl"),
        ("text/csv", "parquet", "parquet"),
        (None, "NDJSON", "jsonl"),
    ],
)
def test_negotiate(accept: str | None, param: str | None, fmt: str) -> None:
    assert negotiate(accept, param) == fmt


def test_negotiate_refuses_naming_the_field() -> None:
    with pytest.raises(ProblemError) as e:
        negotiate("text/html", None)
    assert (e.value.status_code, e.value.field) == (406, "Accept")
    with pytest.raises(ProblemError) as e:
        negotiate(None, "xlsx")
    assert (e.value.status_code, e.value.field) == (400, "format")
    assert media_type("csv") == "text/csv; charset=utf-8"


@pytest.mark.parametrize("fmt", FORMATS)
def test_memory_stays_bounded_over_many_batches(fmt: str) -> None:
    """Peak memory over 200 batches is no more than over 20: nothing accumulates."""
    batch = make_rows(200)

    def peak(n_batches: int) -> tuple[int, int]:
        # Parquet buffers a row group (65 536 rows by default): a smaller one here, so
        # both runs write several groups.
        w = (
            ParquetRowWriter(COLUMNS, row_group_rows=1000)
            if fmt == "parquet"
            else open_writer(fmt, COLUMNS)
        )
        sent = 0
        tracemalloc.start()
        arrow_peak = 0
        try:
            for _ in range(n_batches):
                sent += len(w.write(batch))  # the bytes go out; nothing keeps them
                arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
            sent += len(w.close())
            return tracemalloc.get_traced_memory()[1], arrow_peak
        finally:
            tracemalloc.stop()

    short_py, short_arrow = peak(20)
    long_py, long_arrow = peak(200)
    assert long_py < short_py * 1.5 + 1_000_000, (short_py, long_py)
    assert long_arrow < short_arrow * 1.5 + 1_000_000, (short_arrow, long_arrow)


def test_the_formats_import_without_the_api() -> None:
    """The API's routes import linkpulse.formats: the package must not import the API back."""
    code = "import sys, linkpulse.formats; assert 'linkpulse.api' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.integration
def test_format_loaders_give_each_format_its_values() -> None:
    q = "SELECT 12.50::numeric AS n, 'NaN'::numeric AS nan, '{\"a\": [1]}'::jsonb AS j"
    cols = [Column("n", "numeric"), Column("nan", "numeric"), Column("j", "jsonb")]
    with psycopg.connect(ADMIN_DSN) as conn:
        for fmt, want in [
            ("jsonl", '{"n":12.50,"nan":null,"j":{"a": [1]}}'),
            ("csv", '12.50,NaN,"{""a"": [1]}"'),
        ]:
            cur = conn.cursor()
            use_format_loaders(cur, fmt)
            rows = cur.execute(q).fetchall()
            w = open_writer(fmt, cols)
            assert (w.write(rows) + w.close()).decode().splitlines()[-1] == want
        cur = conn.cursor()
        use_format_loaders(cur, "parquet")
        rows = cur.execute(q).fetchall()
        w = open_writer("parquet", cols)
        got = pl.read_parquet(io.BytesIO(w.write(rows) + w.close()))
        assert got["j"].to_list() == ['{"a": [1]}'] and got["n"].to_list() == [12.5]


@pytest.mark.integration
def test_values_loaded_as_the_servers_text_keep_their_types_and_instants() -> None:
    """CSV and Parquet take times, dates, booleans, uuids and numerics as PostgreSQL prints
    them (in the session's time zone, here +05:30): Parquet parses them into typed
    columns, the same instant; CSV writes them as ISO 8601, booleans true/false."""
    q = (
        "SELECT '2026-11-30 12:00:00.25+00'::timestamptz AS at, "
        "'2026-11-30 12:00:00'::timestamp AS local, DATE '2026-11-30' AS day, "
        "true AS yes, NULL::bool AS unknown, "
        "'00000000-0000-0000-0000-00000000002a'::uuid AS ref, 10.50::numeric(12,2) AS total "
        "UNION ALL SELECT NULL, NULL, NULL, false, NULL, NULL, NULL"
    )
    with psycopg.connect(ADMIN_DSN) as conn:
        conn.execute("SET TimeZone = 'Asia/Kolkata'")
        out = {}
        for fmt in ("parquet", "csv"):
            cur = conn.cursor()
            use_format_loaders(cur, fmt)
            cur.execute(q)
            rows = cur.fetchall()
            assert isinstance(rows[0][0], str)  # loaded as text, no datetime per value
            cols = columns_from_description(cur.description, conn.adapters.types)
            w = open_writer(fmt, cols)
            out[fmt] = w.write(rows) + w.close()
    got = pl.read_parquet(io.BytesIO(out["parquet"]))
    assert got["at"].to_list() == [dt.datetime(2026, 11, 30, 12, 0, 0, 250000, tzinfo=dt.UTC), None]
    naive = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC).replace(tzinfo=None)
    assert got["local"].to_list() == [naive, None]
    assert got["day"].to_list() == [dt.date(2026, 11, 30), None]
    assert got["yes"].to_list() == [True, False] and got["unknown"].to_list() == [None, None]
    assert got["ref"].to_list() == ["00000000-0000-0000-0000-00000000002a", None]
    assert got["total"].to_list() == [Decimal("10.50"), None]
    lines = out["csv"].decode().splitlines()
    assert lines[2:4] == [
        "2026-11-30T17:30:00.25+05:30,2026-11-30T12:00:00,2026-11-30,true,,"
        "00000000-0000-0000-0000-00000000002a,10.50",
        ",,,false,,,",
    ]
