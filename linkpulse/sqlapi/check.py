"""What the SQL endpoint runs: one read-only query, decided by PostgreSQL's own parse tree.

``check_statement`` parses with pglast (libpg_query, the parser of PostgreSQL
itself) and admits exactly one ``SELECT`` (``VALUES``, set operations and
``WITH ... SELECT`` included). Refused before anything runs: syntax errors
(with their position), several statements, every other statement kind
(writes, DDL, ``COPY``, ``SET``/``RESET``, transaction control, ``DO``,
``CALL``, ``LISTEN``, ``EXPLAIN``...), data-modifying CTEs, ``SELECT INTO``,
row locks (``FOR UPDATE``), and the functions that change settings or run SQL
given as a string (``set_config``, ``query_to_xml``, ``dblink``...). The
functions a query calls are returned so the route can also refuse volatile
ones against the catalogue (``VOLATILE_ALLOWED`` lists the harmless ones).
This is a first fence for clear answers; the real wall is the database: a
read-only transaction as a role granted ``SELECT`` on the analyst views only.

Positions are 1-based characters in the text sent, as PostgreSQL reports them.

>>> check_statement("SELECT count(*) FROM analyst.events WHERE type = $1;").params
1
>>> check_statement("DELETE FROM analyst.events")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
linkpulse.sqlapi.check.SqlRefused: DELETE is not allowed: ... (at position 1)
>>> try:
...     check_statement("SELECT 1; SELECT 2")
... except SqlRefused as e:
...     print(e.slug, e.position)
sql-multiple-statements 11
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import pglast
from pglast import ast
from pglast.parser import ParseError

from linkpulse.errors import LinkpulseError

__all__ = [
    "DENIED_FUNCTIONS",
    "VOLATILE_ALLOWED",
    "CheckedStatement",
    "SqlRefused",
    "check_statement",
    "char_position",
    "dollar_placeholders",
]

# Functions refused by name whatever the catalogue says: they change settings or
# run SQL the parser never saw (a string), or reach outside the database.
DENIED_FUNCTIONS: Final = frozenset(
    {
        "set_config",
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "ts_stat",
        "ts_rewrite",
        "dblink",
        "dblink_exec",
        "dblink_connect",
        "dblink_connect_u",
        "dblink_send_query",
        "dblink_open",
        "pg_notify",
        "pg_sleep",
        "pg_sleep_for",
        "pg_sleep_until",
        "pg_cancel_backend",
        "pg_terminate_backend",
        "lo_import",
        "lo_export",
        "nextval",
        "setval",
    }
)
# Volatile functions that neither write nor change anything lasting: allowed.
VOLATILE_ALLOWED: Final = frozenset(
    {
        "random",
        "random_normal",
        "gen_random_uuid",
        "clock_timestamp",
        "timeofday",
        "uuid_generate_v4",
    }
)

_KIND = {
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "CopyStmt": "COPY",
    "VariableSetStmt": "SET/RESET",
    "VariableShowStmt": "SHOW",
    "TransactionStmt": "transaction control",
    "DoStmt": "DO",
    "CallStmt": "CALL",
    "ListenStmt": "LISTEN",
    "NotifyStmt": "NOTIFY",
    "UnlistenStmt": "UNLISTEN",
    "ExplainStmt": "EXPLAIN (use POST /v1/sql/explain)",
    "LockStmt": "LOCK",
    "DeclareCursorStmt": "DECLARE",
    "FetchStmt": "FETCH",
    "PrepareStmt": "PREPARE",
    "ExecuteStmt": "EXECUTE",
    "VacuumStmt": "VACUUM/ANALYZE",
    "GrantStmt": "GRANT/REVOKE",
    "GrantRoleStmt": "GRANT/REVOKE",
    "CreateTableAsStmt": "CREATE TABLE AS",
}
_ONLY = "only one SELECT (VALUES, WITH ... SELECT) runs here"


class SqlRefused(LinkpulseError, ValueError):
    """A statement the endpoint won't run: ``slug`` names why, ``position`` where (1-based)."""

    def __init__(self, slug: str, problem: str, position: int | None = None) -> None:
        self.slug = slug
        self.problem = problem
        self.position = position
        where = f" (at position {position})" if position is not None else ""
        super().__init__(problem + where)


@dataclass(frozen=True)
class CheckedStatement:
    """A statement that passed: its text (no trailing ``;``), tree, params and functions."""

    text: str
    tree: ast.SelectStmt
    params: int  # the highest $n referenced (0: none)
    functions: frozenset[str]  # names called, lowercase and unqualified


_PYFORMAT = re.compile(r"%%|%\((\w+)\)s|%s")


def dollar_placeholders(text: str) -> str:
    """``text`` with psycopg's ``%s`` / ``%(name)s`` placeholders as PostgreSQL's ``$n``.

    For checking a statement written for psycopg (the exports take those) with
    the parser, which knows only ``$n``; ``%%`` is a literal ``%``.

    >>> dollar_placeholders("SELECT %s, %(a)s, %(b)s, %(a)s, '100%%'")
    "SELECT $1, $2, $3, $2, '100%'"
    """
    names: dict[str, int] = {}

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        key = m.group(1) or f"#{len(names)}"
        return f"${names.setdefault(key, len(names) + 1)}"

    return _PYFORMAT.sub(one, text)


def char_position(text: str, offset: int) -> int | None:
    """The 1-based position PostgreSQL reports for pglast's 0-based character ``offset``.

    (pglast gives locations in characters, not libpg_query's bytes.) None if unknown.

    >>> char_position("SELECT 'é', x", 12)
    13
    """
    if offset < 0 or offset > len(text):
        return None
    return offset + 1


def walk(node: Any) -> Iterator[ast.Node]:
    """Every node under ``node`` (itself included), depth first."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Node):
            yield n
            stack.extend(getattr(n, name) for name in n.__slots__)  # type: ignore[attr-defined]
        elif isinstance(n, tuple | list):
            stack.extend(n)


def _refuse(slug: str, problem: str, position: int | None = None) -> NoReturn:
    raise SqlRefused(slug, problem, position)


def _position(text: str, node: Any) -> int | None:
    loc = getattr(node, "location", None)
    return char_position(text, loc) if isinstance(loc, int) else None


def _func_name(node: Any) -> str:
    return str(node.funcname[-1].sval).lower()


def check_statement(text: str) -> CheckedStatement:
    """The one admissible statement in ``text``, or ``SqlRefused`` saying why not."""
    if "\x00" in text:
        _refuse("sql-syntax", "the statement contains a NUL character")
    try:
        stmts = pglast.parse_sql(text)
    except ParseError as e:
        loc = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], int) else -1
        if loc < 0 and "end of input" in str(e.args[0]):
            loc = len(text)  # where PostgreSQL puts it: just past the last character
        _refuse("sql-syntax", f"syntax error: {e.args[0]}", char_position(text, loc))
    if not stmts:
        _refuse("sql-empty", f"no statement to run: {_ONLY}")
    if len(stmts) > 1:
        pos = char_position(text, int(stmts[1].stmt_location or 0))
        _refuse("sql-multiple-statements", f"{len(stmts)} statements: {_ONLY}", pos)
    raw: Any = stmts[0]
    stmt = raw.stmt
    if not isinstance(stmt, ast.SelectStmt):
        name = type(stmt).__name__
        kind = _KIND.get(name) or name.removesuffix("Stmt")
        pos = char_position(text, raw.stmt_location)
        _refuse("sql-not-allowed", f"{kind} is not allowed: {_ONLY}", pos)
    params = 0
    functions: set[str] = set()
    node: Any
    for node in walk(stmt):
        if isinstance(node, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt | ast.MergeStmt):
            kind = _KIND[type(node).__name__]
            pos = _position(text, node.relation) if node.relation else None
            _refuse("sql-not-allowed", f"{kind} in a WITH clause is not allowed: {_ONLY}", pos)
        if isinstance(node, ast.SelectStmt):
            if node.intoClause is not None:
                pos = _position(text, node.intoClause.rel)
                _refuse("sql-not-allowed", "SELECT INTO creates a table: not allowed", pos)
            if node.lockingClause:
                _refuse("sql-not-allowed", "row locks (FOR UPDATE/SHARE) are not allowed")
        elif isinstance(node, ast.ParamRef):
            params = max(params, int(node.number or 0))
        elif isinstance(node, ast.FuncCall):
            name = _func_name(node)
            if name in DENIED_FUNCTIONS:
                pos = _position(text, node)
                _refuse("sql-function-not-allowed", f"function {name}() is not allowed", pos)
            functions.add(name)
    # up to the statement's end: no trailing ';' (the text goes after DECLARE/EXPLAIN)
    end = raw.stmt_location + raw.stmt_len if raw.stmt_len else len(text)
    return CheckedStatement(text[:end], stmt, params, frozenset(functions))
