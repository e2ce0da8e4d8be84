"""Rule unit tests in YAML, as ``promtool test rules`` runs them for Prometheus.

A test file names its rule files and a list of tests; each test gives input
series (values per step in promtool's notation), optional late revisions and
anomaly scores, and the alerts expected at given times::

    rule_files: [payments.yaml]          # relative to the test file
    tests:
      - name: failures page after 3 minutes
        interval: 1m                     # the step (default 1m)
        input_series:
          - series: 'payment_failure_rate{tenant="acme", seller_id="s-1"}'
            values: "0.01 0.06x4 0.01x3" # a, a+bxn (n more steps), axn, _ (no window)
            revisions: [{step: 2, value: 0.01}]   # late data for step 2, seen after step 5
        input_scores:
          - series: 'gmv{tenant="acme"}'
            values: "0.1 0.999x3 0.2"
            explanation: "gmv far below the usual"
        alert_rule_test:
          - eval_time: 5m                # after the windows ending by then
            alertname: failures_high
            exp_alerts:                  # firing (or acknowledged) alerts; [] = none
              - exp_labels: {seller_id: s-1, severity: critical}   # these must match
                exp_annotations: {summary: "..."}                   # exact text

Windows are final 1-minute (``interval``) windows; step ``i`` is the window
``[i*interval, (i+1)*interval)`` ending at ``(i+1)*interval``; the stream
clock ticks after every step (so absence rules and staleness work). A
revision is applied after the step given by ``after`` (default: the last
input step).

>>> import pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "r.yaml").write_text('''rules:
...   - {name: high, kind: threshold, metric: orders, threshold: 5, for: 2m}''')
>>> _ = (d / "r.test.yaml").write_text('''rule_files: [r.yaml]
... tests:
...   - input_series: [{series: 'orders{tenant="a"}', values: "1 9x3"}]
...     alert_rule_test:
...       - {eval_time: 3m, alertname: high, exp_alerts: []}
...       - {eval_time: 4m, alertname: high, exp_alerts: [{exp_labels: {tenant: a}}]}''')
>>> result = run_rule_tests(d / "r.test.yaml")
>>> result.ok, result.passed, result.failures
(True, 2, [])
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from linkpulse.alerts.durations import parse_duration
from linkpulse.alerts.engine import RuleEngine
from linkpulse.alerts.matchers import MatchOp, parse_matchers
from linkpulse.alerts.rules import Problem, check_rule_files
from linkpulse.alerts.types import AlertChange
from linkpulse.alerts.yamlnodes import LocatedDict, LocatedList, YamlSyntaxError, load_located
from linkpulse.operators.metrics import REGISTRY, dims_key
from linkpulse.schemas.outputs import AnomalyScore, Explanation, MetricWindow

__all__ = ["RuleTestResult", "expand_values", "run_rule_tests"]

START = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # a Monday, 00:00 UTC
_TERM = re.compile(
    r"^(?P<a>-?\d+(?:\.\d+)?(?:e-?\d+)?)(?:(?P<sign>[+-])(?P<b>\d+(?:\.\d+)?(?:e-?\d+)?))?(?:x(?P<n>\d+))?$"
)
_SERIES = re.compile(r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<labels>\{.*\})?\s*$")


@dataclasses.dataclass
class RuleTestResult:
    """What a test file gave: checks passed, failures (text), and problems of the files."""

    passed: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed and no file had a problem."""
        return not self.failures and not self.problems


def expand_values(text: str) -> list[float | None]:
    """promtool's value notation: ``1 2+1x3 _x2 5x1`` -> values per step (None: no window).

    >>> expand_values("1 2+1x3 _x2 4-2x2 7x1")
    [1.0, 2.0, 3.0, 4.0, 5.0, None, None, None, 4.0, 2.0, 0.0, 7.0, 7.0]
    """
    out: list[float | None] = []
    for term in str(text).split():
        if term == "_" or term.startswith("_x"):
            n = int(term[2:]) if term.startswith("_x") else 0
            out.extend([None] * (n + 1))
            continue
        m = _TERM.match(term)
        if m is None:
            msg = f"value {term!r}: expected a number, a+bxn, a-bxn, axn or _ (no data)"
            raise ValueError(msg)
        a = float(m["a"])
        b = float(m["b"] or 0) * (-1 if m["sign"] == "-" else 1)
        n = int(m["n"]) if m["n"] else 0
        if m["n"] is None and m["b"] is not None:
            msg = f"value {term!r}: a+b needs a count (a+bxn)"
            raise ValueError(msg)
        out.extend(a + b * i for i in range(n + 1))
    return out


class _Bad(Exception):
    def __init__(self, line: int, field: str, message: str) -> None:
        super().__init__(message)
        self.line, self.field, self.message = line, field, message


def _series(spec: LocatedDict, field: str) -> tuple[str, str, dict[str, str]]:
    text = spec.get("series")
    m = _SERIES.match(text) if isinstance(text, str) else None
    if m is None:
        raise _Bad(
            spec.line_of("series"),
            f"{field}.series",
            f'expected metric{{tenant="...", ...}}, got {text!r}',
        )
    metric = m["metric"]
    try:
        matchers = parse_matchers(m["labels"] or "{}")
    except ValueError as e:
        raise _Bad(spec.line_of("series"), f"{field}.series", str(e)) from None
    labels = {}
    for mt in matchers:
        if mt.op is not MatchOp.EQ:
            raise _Bad(spec.line_of("series"), f"{field}.series", f"input labels use =, got {mt}")
        labels[mt.name] = mt.value
    tenant = labels.pop("tenant", None)
    if not tenant:
        raise _Bad(
            spec.line_of("series"), f"{field}.series", 'needs a tenant label (tenant="acme")'
        )
    return metric, tenant, labels


def _values(spec: LocatedDict, field: str) -> list[float | None]:
    try:
        return expand_values(spec.get("values", ""))
    except ValueError as e:
        raise _Bad(spec.line_of("values"), f"{field}.values", str(e)) from None


def _window(
    metric: str, tenant: str, dims: dict[str, str], i: int, step: float, v: float, rev: int
) -> MetricWindow:
    s = START + timedelta(seconds=i * step)
    return MetricWindow(
        metric=metric,
        tenant=tenant,
        dims_key=dims_key(dims),
        dimensions=dims,
        window="1m" if step == 60 else f"{int(step)}s",
        window_start=s,
        window_end=s + timedelta(seconds=step),
        value=v,
        count=1,
        revision=rev,
        final=True,
    )


def _inputs(test: LocatedDict, field: str, step: float) -> list[tuple[float, int, Any]]:
    """(time, order, item) of every input; the caller sorts and feeds them."""
    items: list[tuple[float, int, Any]] = []
    order = 0
    last_step = 0
    series_list = test.get("input_series", [])
    if not isinstance(series_list, list):
        raise _Bad(test.line_of("input_series"), f"{field}.input_series", "expected a list")
    pending_revisions: list[tuple[LocatedDict, str, str, str, dict[str, str]]] = []
    for i, spec in enumerate(series_list):
        f = f"{field}.input_series[{i}]"
        if not isinstance(spec, LocatedDict):
            raise _Bad(test.line, f, "expected {series, values}")
        metric, tenant, dims = _series(spec, f)
        if metric not in REGISTRY:
            raise _Bad(spec.line_of("series"), f"{f}.series", f"unknown metric {metric!r}")
        for j, v in enumerate(_values(spec, f)):
            last_step = max(last_step, j)
            if v is not None:
                order += 1
                items.append(((j + 1) * step, order, _window(metric, tenant, dims, j, step, v, 0)))
        for k, r in enumerate(spec.get("revisions", []) or []):
            pending_revisions.append((r, f"{f}.revisions[{k}]", metric, tenant, dims))
    for r, f, metric, tenant, dims in pending_revisions:
        if (
            not isinstance(r, LocatedDict)
            or not isinstance(r.get("step"), int)
            or not isinstance(r.get("value"), int | float)
        ):
            raise _Bad(
                getattr(r, "line", test.line),
                f,
                "expected {step: <int>, value: <number>, after: <int>}",
            )
        after = r.get("after", last_step)
        order += 1
        rev = _window(metric, tenant, dims, r["step"], step, float(r["value"]), 1)
        items.append(((after + 1) * step + 0.5, order, rev))  # after that step's windows
    scores = test.get("input_scores", []) or []
    for i, spec in enumerate(scores):
        f = f"{field}.input_scores[{i}]"
        if not isinstance(spec, LocatedDict):
            raise _Bad(test.line, f, "expected {series, values}")
        metric, tenant, dims = _series(spec, f)
        key = f"{tenant}|{metric}|{dims_key(dims)}|1m"
        for j, v in enumerate(_values(spec, f)):
            if v is None:
                continue
            order += 1
            t = START + timedelta(seconds=j * step)
            items.append(
                (
                    (j + 1) * step,
                    order,
                    AnomalyScore(
                        series=key,
                        time=t,
                        score=v,
                        raw=0.0,
                        value=_opt(spec, "observed"),
                        expected=_opt(spec, "expected"),
                        lower=_opt(spec, "lower"),
                        upper=_opt(spec, "upper"),
                        direction=str(spec.get("direction", "up")),
                        warm=bool(spec.get("warm", True)),
                        model="test",
                        explanation=str(spec.get("explanation", "")),
                        details=Explanation(detector="test"),
                    ),
                )
            )
    return items


def _opt(spec: LocatedDict, key: str) -> float | None:
    v = spec.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _check(
    at_s: float, check: LocatedDict, field: str, engine: RuleEngine, name: str
) -> Iterator[str | None]:
    rule = check.get("alertname")
    got = [a for a in engine.open_alerts() if a.rule == rule and a.is_active]
    want = check.get("exp_alerts", []) or []
    when = f"at {check.get('eval_time')}"
    used: set[int] = set()
    for k, exp in enumerate(want):
        labels = exp.get("exp_labels", {}) or {}
        notes = exp.get("exp_annotations", {}) or {}
        match = next(
            (i for i, a in enumerate(got) if i not in used and _matches(a, labels, notes)),
            None,
        )
        if match is None:
            seen = "; ".join(_describe(a) for a in got) or "none"
            where = f"{field}.exp_alerts[{k}], line {check.line_of('exp_alerts')}"
            yield (
                f"{name}: {when}, {rule}: expected alert #{k + 1} {dict(labels)} {dict(notes)}"
                f" not found (firing: {seen}) [{where}]"
            )
        else:
            used.add(match)
            yield None
    extra = [a for i, a in enumerate(got) if i not in used]
    if extra:
        yield (
            f"{name}: {when}, {rule}: unexpected firing alerts: "
            + "; ".join(_describe(a) for a in extra)
            + f" [{field}, line {check.line}]"
        )
    elif not want:
        yield None


def _matches(a: AlertChange, labels: Any, notes: Any) -> bool:
    if any(a.labels.get(str(k)) != str(v) for k, v in labels.items()):
        return False
    have = {"summary": a.summary, "description": a.description}
    return all(have.get(str(k)) == str(v) for k, v in notes.items())


def _describe(a: AlertChange) -> str:
    return f"{a.labels} summary={a.summary!r}"


def run_rule_tests(path: str | Path) -> RuleTestResult:
    """Run every test of the test file at ``path`` (see the module docstring)."""
    path = Path(path)
    result = RuleTestResult()
    file = str(path)
    try:
        doc = load_located(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        result.problems.append(Problem(file, 0, "(file)", f"cannot read it: {e}"))
        return result
    except YamlSyntaxError as e:
        result.problems.append(Problem(file, e.line, "(syntax)", e.message))
        return result
    if not isinstance(doc, LocatedDict) or not isinstance(doc.get("tests"), LocatedList):
        result.problems.append(
            Problem(file, 1, "tests", "a rule test file has rule_files and tests: [...]")
        )
        return result
    names = doc.get("rule_files", [])
    if not isinstance(names, list) or not names:
        result.problems.append(
            Problem(file, doc.line_of("rule_files"), "rule_files", "expected a list of rule files")
        )
        return result
    rules, problems = check_rule_files([path.parent / str(n) for n in names])
    if problems:
        result.problems.extend(problems)
        return result
    for ti, test in enumerate(doc["tests"]):
        field = f"tests[{ti}]"
        if not isinstance(test, LocatedDict):
            result.problems.append(
                Problem(file, doc["tests"].line_at(ti), field, "expected a mapping")
            )
            continue
        name = str(test.get("name", f"test #{ti + 1}"))
        try:
            step = parse_duration(test.get("interval", "1m"))
            if step <= 0:
                raise _Bad(test.line_of("interval"), f"{field}.interval", "must be positive")
            items = _inputs(test, field, step)
            checks = []
            for ci, check in enumerate(test.get("alert_rule_test", []) or []):
                f = f"{field}.alert_rule_test[{ci}]"
                if not isinstance(check, LocatedDict) or "eval_time" not in check:
                    raise _Bad(
                        test.line_of("alert_rule_test"),
                        f,
                        "expected {eval_time, alertname, exp_alerts}",
                    )
                if check.get("alertname") not in rules.by_name():
                    raise _Bad(
                        check.line_of("alertname"),
                        f"{f}.alertname",
                        f"no rule named {check.get('alertname')!r} in the rule files",
                    )
                try:
                    t = parse_duration(check["eval_time"])
                except ValueError as e:
                    raise _Bad(check.line_of("eval_time"), f"{f}.eval_time", str(e)) from None
                checks.append((t, ci, check, f))
        except _Bad as e:
            result.problems.append(Problem(file, e.line, e.field, e.message))
            continue
        engine = RuleEngine(rules)
        items.sort(key=lambda x: (x[0], x[1]))
        end = max([x[0] for x in items] + [c[0] for c in checks] + [0.0])
        ticks = [(k * step, 10**9, None) for k in range(1, int(end // step) + 2)]
        timeline = sorted(items + ticks, key=lambda x: (x[0], x[1]))
        pos = 0
        for t, _, check, f in sorted(checks, key=lambda c: (c[0], c[1])):
            while pos < len(timeline) and timeline[pos][0] <= t:
                at_s, _, item = timeline[pos]
                if item is None:
                    engine.on_tick((START + timedelta(seconds=at_s)).timestamp())
                elif isinstance(item, MetricWindow):
                    engine.on_window(item)
                else:
                    engine.on_score(item)
                pos += 1
            for failure in _check(t, check, f, engine, name):
                if failure is None:
                    result.passed += 1
                else:
                    result.failures.append(failure)
    return result
