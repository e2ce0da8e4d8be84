"""Exports: any SQL (or query-API) result as CSV, JSON or Parquet, streamed in constant memory.

The API runs exports as background jobs (``POST /v1/exports``, state in the
``export_jobs`` table, progress polled or on SSE, a signed download link that
expires); ``linkpulse export`` runs the same stream from the command line.
Both read through the store's scoped analyst session, stamp a watermark (who
exported what and when) into the file, and write an audit entry. See
docs/exports.md.

>>> from linkpulse.exports.request import FORMATS
>>> FORMATS
('csv', 'json', 'jsonl', 'parquet')
"""
