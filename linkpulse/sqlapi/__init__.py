"""The SQL endpoint's pure logic: statement checks, per-role limits, plan advice.

Nothing here touches a database or HTTP: ``check`` parses with PostgreSQL's own
parser (pglast), ``limits`` reads the per-role setting, ``advice`` reads a
plan. ``linkpulse.api.routes.sql`` wires them to the analyst sessions.
"""
