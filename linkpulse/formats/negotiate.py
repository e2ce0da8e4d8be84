"""Which result format a request asks for: ``format=`` first, else the ``Accept`` header.

Unknown ``format=`` values are a 400 naming ``format``; an ``Accept`` header
that allows none of the formats is a 406 naming ``Accept``. No ``format`` and
no ``Accept`` (or ``*/*``) means the default, JSON lines.

>>> negotiate(None, "csv")
'csv'
>>> negotiate("application/vnd.apache.parquet, text/csv;q=0.5", None)
'parquet'
>>> negotiate("text/html;q=0.9, text/csv;q=0.1", None)
'csv'
>>> negotiate(None, None), media_type("jsonl")
('jsonl', 'application/x-ndjson')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from linkpulse.api.problems import ProblemError

__all__ = ["DEFAULT_FORMAT", "FORMATS", "media_type", "negotiate"]

DEFAULT_FORMAT = "jsonl"

# format -> its media type (the first listed) and the other names clients send for it.
_MEDIA: dict[str, tuple[str, ...]] = {
    "jsonl": ("application/x-ndjson", "application/jsonl", "application/jsonlines"),
    "csv": ("text/csv",),
    "json": ("application/json",),
    "parquet": ("application/vnd.apache.parquet", "application/x-parquet"),
}
FORMATS = tuple(_MEDIA)
_BY_MEDIA = {m: f for f, ms in _MEDIA.items() for m in ms}
_ALIASES = {"ndjson": "jsonl", "jsonlines": "jsonl"}


def media_type(fmt: str) -> str:
    """The ``Content-Type`` of ``fmt`` (CSV with ``charset=utf-8``)."""
    base = _MEDIA[fmt][0]
    return base + "; charset=utf-8" if fmt == "csv" else base


def _accepted(accept: str) -> list[tuple[float, int, str]]:
    """``(q, order, media range)`` of each part of an ``Accept`` header, best first."""
    out = []
    for i, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        media, q = fields[0].lower(), 1.0
        for p in fields[1:]:
            if p.lower().startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if media and q > 0:
            out.append((-q, i, media))
    return sorted(out)


def _problem(status: int, slug: str, title: str, detail: str, field: str) -> ProblemError:
    # Imported when needed: importing linkpulse.api loads the whole app, whose routes
    # import this package (the exports, the SQL endpoint).
    from linkpulse.api.problems import ProblemError  # noqa: PLC0415

    return ProblemError(status, slug, title, detail, field=field)


def negotiate(accept_header: str | None, format_param: str | None) -> str:
    """The format to answer in (``jsonl``, ``csv``, ``json``, ``parquet``)."""
    if format_param is not None:
        fmt = _ALIASES.get(format_param.strip().lower(), format_param.strip().lower())
        if fmt not in _MEDIA:
            detail = f"unknown format {format_param!r}: use one of {', '.join(FORMATS)}"
            raise _problem(400, "unknown-format", "Unknown format", detail, "format")
        return fmt
    if not accept_header or not accept_header.strip():
        return DEFAULT_FORMAT
    for _, _, media in _accepted(accept_header):
        if media in ("*/*", "application/*"):
            return DEFAULT_FORMAT
        if media in _BY_MEDIA:
            return _BY_MEDIA[media]
        if media == "text/*":
            return "csv"
    detail = (
        f"none of the media types in Accept ({accept_header[:200]!r}) can be produced: "
        f"send one of {', '.join(m[0] for m in _MEDIA.values())}, or format=" + "|".join(FORMATS)
    )
    raise _problem(406, "not-acceptable", "Not acceptable", detail, "Accept")
