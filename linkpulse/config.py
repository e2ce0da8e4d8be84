"""Configuration from environment variables, validated once at start.

Every setting is an environment variable ``LINKPULSE_<NAME>``; defaults point
at loopback so a local stack works with no configuration at all.

>>> s = Settings(nats_url="nats://127.0.0.1:4222")
>>> s.stream_name
'LINKPULSE_EVENTS'
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from linkpulse.errors import ConfigError


class Settings(BaseSettings):
    """All of linkpulse's settings; see ``docs/configuration.md`` for each one."""

    model_config = SettingsConfigDict(env_prefix="LINKPULSE_", frozen=True, extra="ignore")

    # services
    nats_url: str = Field(
        "nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated"
    )
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/test", description="PostgreSQL/TimescaleDB DSN"
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL for live state")
    state_dir: Path = Field(
        Path(".linkpulse"), description="where `linkpulse up` keeps embedded services' data"
    )

    # JetStream
    stream_name: str = Field("LINKPULSE_EVENTS", description="JetStream stream holding raw events")
    subject_prefix: str = Field("linkpulse", description="first token of every subject")
    stream_max_age_s: float = Field(7 * 24 * 3600, gt=0, description="events kept in the stream")
    stream_max_bytes: int = Field(-1, description="stream size limit in bytes, -1 for none")
    stream_duplicate_window_s: float = Field(
        120, gt=0, description="JetStream de-duplication window for event ids"
    )

    # ingestion API
    ingest_max_batch: int = Field(1000, gt=0, le=100_000, description="events per POST")
    ingest_max_body_bytes: int = Field(5 * 1024 * 1024, gt=0, description="POST body size limit")
    api_host: str = Field("127.0.0.1", description="`linkpulse serve` bind address")
    api_port: int = Field(8000, gt=0, lt=65536, description="`linkpulse serve` port")
    store_outage_s: float = Field(
        300,
        ge=0,
        description="how long the dataflow stays paused waiting for an unreachable store "
        "before it stops (a restart resumes from the last snapshot)",
    )
    metrics_port: int = Field(
        9464, ge=0, lt=65536, description="dataflow Prometheus /metrics port, 0 to disable"
    )

    # store
    store_tier: str = Field(
        "auto", description="auto, or force a lower tier: full_timescale, apache_timescale, plain"
    )
    store_raw_retention_days: int = Field(90, gt=0, description="days raw events are kept")
    store_rollup_retention_days: int = Field(730, gt=0, description="days rollups are kept")
    store_compress_after_days: int = Field(7, gt=0, description="compress chunks older than this")
    store_partitions_ahead_days: int = Field(7, ge=1, description="daily partitions made ahead")
    store_maintain_interval_s: float = Field(60, gt=0, description="`db maintain` loop interval")
    analyst_role: str = Field("linkpulse_analyst", description="read-only NOLOGIN analyst role")
    analyst_sql_login: str = Field("linkpulse_sql", description="login role of the SQL endpoint")
    db_pool_min: int = Field(
        1, ge=0, le=100, description="connections the API's owner pool (keys, audit) keeps open"
    )
    db_pool_max: int = Field(
        4,
        ge=1,
        le=100,
        description="connections each of the API's two pools (owner; scoped analyst reads) "
        "opens at most",
    )
    db_pool_max_idle_s: float = Field(
        600,
        ge=0,
        description="an idle pooled connection above the minimum is closed after this; 0: none "
        "is kept, each use opens its own (needs LINKPULSE_DB_POOL_MIN=0; for a server that "
        "serves few connections)",
    )

    # access: principals, rate limits, streams, audit (docs/api-access.md, docs/streams.md)
    auth: str = Field("on", description="on, or off (loopback binds only: every caller is admin)")
    auth_jwt_public_key_file: Path | None = Field(None, description="PEM public key for JWTs")
    auth_jwt_jwks_file: Path | None = Field(None, description="JWKS file for JWTs (by kid)")
    auth_jwt_algorithms: str = Field("RS256,ES256", description="accepted JWT algorithms")
    auth_jwt_audience: str | None = Field(None, description="required JWT aud")
    auth_jwt_issuer: str | None = Field(None, description="required JWT iss")
    auth_jwt_role_claim: str = Field("role", description="JWT claim holding the role")
    auth_jwt_tenant_claim: str = Field("tenant", description="JWT claim holding the tenant")
    auth_jwt_seller_claim: str = Field("seller", description="JWT claim holding the seller")
    auth_cache_s: float = Field(5, ge=0, le=20, description="API key lookups cached this long")
    rate_limits: str = Field(
        "admin=200/400,operator=50/100,analyst=50/100,viewer=20/40,ingest=500/1000,seller=20/40",
        description="per-role token buckets: role=requests_per_s/burst, comma-separated",
    )
    redis_key_prefix: str = Field(
        "linkpulse:", description="the dataflow's Redis key prefix (run dataflow --redis-prefix)"
    )
    updates_max_age_s: float = Field(
        900, gt=0, description="window updates kept in JetStream for SSE resume"
    )
    stream_max_per_principal: int = Field(10, gt=0, description="open streams per principal")
    stream_max_total: int = Field(5000, gt=0, description="open streams per API process")
    stream_queue_size: int = Field(1024, gt=0, description="events queued per slow client")
    stream_max_replay: int = Field(10_000, gt=0, description="events replayed on resume, at most")
    stream_heartbeat_s: float = Field(15, gt=0, description="SSE heartbeat comment interval")
    stream_revalidate_s: float = Field(10, gt=0, description="open streams re-check their key")
    audit_flush_s: float = Field(1.0, gt=0, description="audit log batch interval")
    audit_watch: bool = Field(
        True,
        description="score each principal's audit volumes (requests, rows, refusals) per "
        "minute with the anomaly detectors; one API process leads (docs/api-access.md)",
    )

    # exports and archiving (docs/exports.md)
    export_dir: Path = Field(
        Path(".linkpulse/exports"), description="where export jobs write their files"
    )
    export_link_ttl_s: float = Field(
        3600, gt=0, le=7 * 24 * 3600, description="an export's download link is valid this long"
    )
    export_max_running: int = Field(2, gt=0, le=64, description="export jobs run at once per API")
    archive_target: str = Field(
        "",
        description="archive partitions/chunks to Parquet before retention drops them: "
        "a folder, file:///path or s3://bucket/prefix; empty: no archive",
    )
    archive_tables: str = Field("events", description="tables archived, comma-separated")

    # query cache and slow-query log (docs/caching.md)
    query_cache_ttl_s: float = Field(
        3600, ge=0, description="query answers kept in Redis this long, 0 to cache nothing"
    )
    query_cache_bucket_s: int = Field(
        3600,
        ge=60,
        le=86400,
        description="fine time bucket of the cache's data watermarks (divides a day; "
        "invalidation is exact to it)",
    )
    query_cache_max_entry_bytes: int = Field(
        1 << 20, ge=0, description="answers larger than this are served but not cached"
    )
    query_cache_timeout_s: float = Field(
        1.0,
        gt=0,
        description="a cache read or write slower than this answers uncached (and Redis is "
        "left alone for 5 s)",
    )
    query_cache_warm: bool = Field(
        True,
        description="warm the dashboard's queries after each rollup refresh (LISTENs on a "
        "connection of its own)",
    )
    query_slow_s: float = Field(
        0.5, ge=0, description="queries slower than this go to the slow-query log"
    )
    query_max_points: int = Field(
        10_000,
        ge=10,
        le=1_000_000,
        description="points a series (or a query's time grain) has at most",
    )

    # the SQL endpoint (docs/sql-endpoint.md)
    sql_limits: str = Field(
        "admin=60/1000000,operator=30/200000,analyst=60/1000000,seller=15/100000",
        description="per-role SQL endpoint limits: role=timeout_s/max_rows, comma-separated "
        "(roles not named: 30/100000)",
    )
    sql_fetch_rows: int = Field(
        5000, gt=0, le=100_000, description="rows the SQL endpoint fetches per batch"
    )
    sql_idle_timeout_s: float = Field(
        60, gt=0, description="a SQL result whose client stops reading this long is ended"
    )

    # alerting: acknowledgements from PagerDuty (docs/notifications.md)
    pagerduty_webhook_secret: str = Field(
        "", description="signing secret of the PagerDuty v3 webhook; empty refuses the webhook"
    )

    # privacy: PII pseudonymised at ingest (docs/privacy.md); the key validates after the fields
    privacy_pii_fields: str = Field(
        "",
        description="PII fields pseudonymised at ingest, comma-separated: user_id and/or "
        "properties.<key>[.<key>] (e.g. properties.email,properties.ip); empty: none",
    )
    privacy_keep_raw: bool = Field(
        False, description="store the PII fields as sent (opt-in; no pseudonymisation)"
    )
    privacy_key: SecretStr = Field(
        SecretStr(""),
        validate_default=True,
        description="HMAC-SHA256 key of the pseudonyms (at least 16 characters); "
        "required when PII fields are set",
    )
    privacy_previous_keys: SecretStr = Field(
        SecretStr(""),
        description="earlier keys, comma-separated: privacy erase/export also find "
        "pseudonyms made with them (key rotation)",
    )

    # logging
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_json: bool = Field(False, description="JSON log lines instead of console rendering")

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, v: str) -> str:
        for url in v.split(","):
            if not url.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                msg = f"expected nats://host:port (comma-separated for a cluster), got {url!r}"
                raise ValueError(msg)
        return v

    @field_validator("database_url")
    @classmethod
    def _pg_scheme(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://")):
            msg = f"expected postgresql://user@host:port/dbname, got {v!r}"
            raise ValueError(msg)
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            msg = f"expected redis://host:port/db, got {v!r}"
            raise ValueError(msg)
        return v

    @field_validator("sql_limits")
    @classmethod
    def _sql_limits(cls, v: str) -> str:
        from linkpulse.sqlapi.limits import parse_sql_limits  # noqa: PLC0415 (config loads first)

        parse_sql_limits(v)
        return v

    @field_validator("db_pool_max")
    @classmethod
    def _pool_max(cls, v: int, info: ValidationInfo) -> int:
        if v < info.data.get("db_pool_min", 0):
            msg = f"expected at least LINKPULSE_DB_POOL_MIN ({info.data['db_pool_min']}), got {v}"
            raise ValueError(msg)
        return v

    @field_validator("db_pool_max_idle_s")
    @classmethod
    def _pool_idle(cls, v: float, info: ValidationInfo) -> float:
        if v == 0 and info.data.get("db_pool_min", 0) > 0:
            msg = (
                "0 (no idle connection kept) needs LINKPULSE_DB_POOL_MIN=0, "
                f"not {info.data['db_pool_min']}"
            )
            raise ValueError(msg)
        return v

    @field_validator("query_cache_bucket_s")
    @classmethod
    def _bucket_divides_day(cls, v: int) -> int:
        if v % 60 or 86400 % v:
            msg = f"expected a multiple of 60 that divides 86400 (e.g. 900, 3600), got {v}"
            raise ValueError(msg)
        return v

    @field_validator("auth")
    @classmethod
    def _auth_mode(cls, v: str) -> str:
        if v.lower() not in {"on", "off"}:
            msg = f"expected on or off, got {v!r}"
            raise ValueError(msg)
        return v.lower()

    @field_validator("privacy_pii_fields")
    @classmethod
    def _pii_fields(cls, v: str) -> str:
        for name in (f.strip() for f in v.split(",") if f.strip()):
            path = name.split(".")
            if name != "user_id" and not (
                len(path) >= 2 and path[0] == "properties" and all(path[1:])
            ):
                msg = (
                    f"expected user_id or properties.<key> (comma-separated), got {name!r}; "
                    "seller_id, tenant and event_id are not pseudonymised (scope and keys use them)"
                )
                raise ValueError(msg)
        return v

    @field_validator("privacy_key")
    @classmethod
    def _privacy_key(cls, v: SecretStr, info: ValidationInfo) -> SecretStr:
        fields = info.data.get("privacy_pii_fields", "")
        needed = fields.strip(", ") and not info.data.get("privacy_keep_raw", False)
        if needed and len(v.get_secret_value()) < 16:
            msg = (
                "required (at least 16 characters) when LINKPULSE_PRIVACY_PII_FIELDS is set "
                f"({fields!r}), unless LINKPULSE_PRIVACY_KEEP_RAW=true"
            )
            raise ValueError(msg)
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            msg = f"expected DEBUG, INFO, WARNING or ERROR, got {v!r}"
            raise ValueError(msg)
        return v.upper()


def load_settings(**overrides: object) -> Settings:
    """Read and validate the environment; raise ConfigError naming the bad variable.

    >>> load_settings(api_port=0)
    Traceback (most recent call last):
    ...
    linkpulse.errors.ConfigError: LINKPULSE_API_PORT: Input should be greater than 0 (got 0)
    """
    # URLs of servers `linkpulse up` started, from <state_dir>/env; real env vars win over it.
    state_dir = Path(os.environ.get("LINKPULSE_STATE_DIR", ".linkpulse"))
    overrides.setdefault("_env_file", state_dir / "env")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        lines = []
        for err in e.errors():
            name = "LINKPULSE_" + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("; ".join(lines)) from e


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
