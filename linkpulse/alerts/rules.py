"""Alert rules: YAML files of rules, checked with file, line and field for every problem.

A rule file holds ``rules:`` (and optionally ``tenant:``, which scopes every
rule of the file to that tenant; without it the rules apply to all tenants).
Each rule has a ``name`` and a ``kind``:

* ``threshold``: a metric window's value against ``threshold`` with ``op``
  (``>``, ``>=``, ``<``, ``<=``), optionally with ``recovery`` (hysteresis:
  fire above 5%, resolve only below 3%);
* ``anomaly``: the detector's score for the metric at or above ``threshold``
  (default 0.99, ``online_ml.PAGE_THRESHOLD``), optionally one ``direction``;
* ``absence``: no window of the metric for ``absent_for``, for a series that
  had data;
* ``rate_of_change``: the change from the series' previous window
  (``change: relative`` (default) or ``absolute``) against ``threshold``;
* ``forecast``: the value outside the forecast's ``interval`` (80 or 95%).

Every rule may have ``window`` (default ``1m``), ``where`` (label matchers on
the series: ``tenant`` and its dimensions, e.g. ``seller_id=~"s-1.*"``),
``for``, ``keep_firing_for``, ``severity`` (``critical``, ``warning``,
``info``), ``labels``, and ``summary``/``description`` templates with
``{{ value }}``, ``{{ threshold }}``, ``{{ band }}``, ``{{ explanation }}``,
``{{ labels.seller_id }}``... (``{{ value:.1% }}`` formats like Python).

>>> rs = parse_rules('''
... rules:
...   - name: failures_high
...     kind: threshold
...     metric: payment_failure_rate
...     op: ">"
...     threshold: 0.05
...     recovery: 0.03
...     for: 3m
...     severity: critical
...     summary: "payment failures at {{ value:.1% }} (fire above {{ threshold:.0% }})"
... ''', "inline.yaml")
>>> r = rs.rules[0]
>>> r.name, r.for_s, r.recovery, r.source
('failures_high', 180.0, 0.03, 'inline.yaml:3')
>>> parse_rules("rules:\\n  - {name: x, kind: threshold, metric: gmvv, threshold: 1}",
...     "bad.yaml")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
linkpulse.alerts.rules.RuleFileError: bad.yaml:2: rules[0](x).metric: unknown metric 'gmvv'; ...
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from linkpulse.alerts.durations import parse_duration
from linkpulse.alerts.matchers import Matcher, matches_all, parse_matchers
from linkpulse.alerts.yamlnodes import LocatedDict, LocatedList, YamlSyntaxError, load_located
from linkpulse.operators.metrics import REGISTRY
from linkpulse.operators.windows import WindowSpec

__all__ = [
    "DEFAULT_SCORE_THRESHOLD",
    "Problem",
    "Rule",
    "RuleFileError",
    "RuleKind",
    "RuleSet",
    "check_rule_files",
    "load_rule_files",
    "parse_rules",
    "render",
    "rule_files",
]

# online_ml.PAGE_THRESHOLD (not imported: that package loads River, seconds at start).
DEFAULT_SCORE_THRESHOLD = 0.99
SEVERITIES = ("critical", "warning", "info")
JOINT_METRIC = "joint"  # the per-tenant multivariate detector's series (online_ml.joint)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_:.-]*")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(?::([^}]*))?\}\}")
# Labels every alert gets from its rule and series; a rule may not set them.
RESERVED_LABELS = ("alertname", "tenant", "metric", "window", "severity")
TEMPLATE_NAMES = (
    "value",
    "observed",
    "expected",
    "lower",
    "upper",
    "band",
    "threshold",
    "recovery",
    "explanation",
    "rule",
    "severity",
    "tenant",
    "metric",
    "window",
    "series",
    "for",
)


class RuleKind(enum.StrEnum):
    """What a rule looks at."""

    THRESHOLD = "threshold"
    ANOMALY = "anomaly"
    ABSENCE = "absence"
    RATE_OF_CHANGE = "rate_of_change"
    FORECAST = "forecast"


_OPS = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong in a rule file: where (file, line, field) and what."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class RuleFileError(ValueError):
    """A rule file (or set of files) that cannot be used; ``problems`` lists every one."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclasses.dataclass(frozen=True)
class Rule:
    """One validated rule (see the module docstring for the fields' meaning)."""

    name: str
    kind: RuleKind
    metric: str
    window: str = "1m"
    tenant: str | None = None
    where: tuple[Matcher, ...] = ()
    op: str = ">"
    threshold: float = 0.0
    recovery: float | None = None
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    absent_for_s: float = 0.0
    change: str = "relative"
    direction: str = "any"
    interval: int = 95
    severity: str = "warning"
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    summary: str = ""
    description: str = ""
    source: str = ""

    @property
    def step_s(self) -> float:
        """The rule's window step in seconds (how often a series gets a sample)."""
        return float(WindowSpec.parse(self.window).step_s)

    def breaches(self, x: float) -> bool:
        """Whether ``x`` is past the firing threshold."""
        return _OPS[self.op](float(x), self.threshold)

    def holds(self, x: float) -> bool:
        """Whether a firing alert with value ``x`` stays firing (hysteresis when ``recovery``)."""
        if self.recovery is None:
            return self.breaches(x)
        upward = self.op in (">", ">=")
        return x >= self.recovery if upward else x <= self.recovery

    def applies_to(self, tenant: str, labels: Mapping[str, str]) -> bool:
        """Whether this rule covers a series of ``tenant`` with dimension ``labels``."""
        if self.tenant is not None and tenant != self.tenant:
            return False
        return not self.where or matches_all(self.where, labels)


@dataclasses.dataclass(frozen=True)
class RuleSet:
    """Rules by the metric and window they read (what the dataflow step consults)."""

    rules: tuple[Rule, ...] = ()
    files: tuple[str, ...] = ()
    _index: dict[tuple[str, str], tuple[Rule, ...]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        index: dict[tuple[str, str], list[Rule]] = {}
        for r in self.rules:
            index.setdefault((r.metric, r.window), []).append(r)
        object.__setattr__(self, "_index", {k: tuple(v) for k, v in index.items()})

    def for_series(self, metric: str, window: str) -> tuple[Rule, ...]:
        """The rules reading ``metric`` at ``window`` (empty when none)."""
        return self._index.get((metric, window), ())

    def by_name(self) -> dict[str, Rule]:
        """Rules by name."""
        return {r.name: r for r in self.rules}


# -- templates -------------------------------------------------------------------------------


def render(template: str, values: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """Fill ``{{ name }}`` / ``{{ name:fmt }}`` / ``{{ labels.x }}``; None shows as ``n/a``.

    >>> render("{{ value:.1% }} vs {{ band }} at {{ labels.seller_id }}", {"value": 0.0712,
    ...     "band": "1.0%-3.0%"}, {"seller_id": "s-1"})
    '7.1% vs 1.0%-3.0% at s-1'
    """

    def one(m: re.Match[str]) -> str:
        name, fmt = m[1], m[2]
        if name.startswith("labels."):
            v: Any = labels.get(name[7:], "")
        else:
            v = values.get(name)
        if v is None:
            return "n/a"
        if fmt:
            try:
                return format(v, fmt.strip())
            except (TypeError, ValueError):
                return str(v)
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    return _TEMPLATE.sub(one, template)


def _check_template(text: str) -> str | None:
    for m in _TEMPLATE.finditer(text):
        name, fmt = m[1], m[2]
        if name.startswith("labels."):
            if not _LABEL.fullmatch(name[7:]):
                return f"{{{{ {name} }}}}: not a label name"
            continue
        if name not in TEMPLATE_NAMES:
            known = ", ".join(TEMPLATE_NAMES)
            return f"unknown template variable {name!r}; known: {known}, labels.<name>"
        if fmt:
            try:
                format(1.0, fmt.strip())
            except ValueError as e:
                return f"{{{{ {name}:{fmt} }}}}: bad format: {e}"
    rest = _TEMPLATE.sub("", text)
    if "{{" in rest or "}}" in rest:
        return "unbalanced {{ }} in the template"
    return None


# -- parsing ---------------------------------------------------------------------------------

_COMMON = {
    "name",
    "kind",
    "metric",
    "window",
    "where",
    "for",
    "keep_firing_for",
    "severity",
    "labels",
    "summary",
    "description",
}
_KIND_FIELDS: dict[RuleKind, set[str]] = {
    RuleKind.THRESHOLD: {"op", "threshold", "recovery"},
    RuleKind.ANOMALY: {"threshold", "recovery", "direction"},
    RuleKind.ABSENCE: {"absent_for"},
    RuleKind.RATE_OF_CHANGE: {"op", "threshold", "recovery", "change"},
    RuleKind.FORECAST: {"interval", "direction"},
}


class _Checker:
    """Collects problems for one file while building its rules."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def bad(self, line: int, field: str, message: str) -> None:
        self.problems.append(Problem(self.file, line, field, message))


def _number(c: _Checker, spec: LocatedDict, key: str, field: str) -> float | None:
    v = spec.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        c.bad(spec.line_of(key), field, f"expected a finite number, got {v!r}")
        return None
    return float(v)


def _duration(c: _Checker, spec: LocatedDict, key: str, field: str) -> float:
    if key not in spec:
        return 0.0
    try:
        return parse_duration(spec[key])
    except ValueError as e:
        c.bad(spec.line_of(key), field, str(e))
        return 0.0


def _rule(c: _Checker, spec: Any, line: int, at: str, tenant: str | None) -> Rule | None:
    if not isinstance(spec, LocatedDict):
        c.bad(line, at, f"expected a mapping (a rule), got {spec!r}")
        return None
    before = len(c.problems)
    name = spec.get("name")
    if isinstance(name, bool):
        c.bad(spec.line_of("name"), f"{at}.name", f"YAML read the name as {name!r}: quote it")
    elif not isinstance(name, str) or not _NAME.fullmatch(name):
        c.bad(
            spec.line_of("name"),
            f"{at}.name",
            f"a rule needs a name ([A-Za-z_][A-Za-z0-9_:.-]*), got {name!r}",
        )
    label = f"{at}" if not isinstance(name, str) else f"{at}({name})"
    try:
        kind = RuleKind(str(spec.get("kind")))
    except ValueError:
        kinds = ", ".join(k.value for k in RuleKind)
        c.bad(
            spec.line_of("kind"),
            f"{label}.kind",
            f"expected one of {kinds}, got {spec.get('kind')!r}",
        )
        return None
    allowed = _COMMON | _KIND_FIELDS[kind]
    for key in spec:
        if key not in allowed:
            c.bad(
                spec.line_of(key),
                f"{label}.{key}",
                f"unknown field for a {kind.value} rule; allowed: {', '.join(sorted(allowed))}",
            )
    metric = spec.get("metric")
    known = metric in REGISTRY or (kind is RuleKind.ANOMALY and metric == JOINT_METRIC)
    if not isinstance(metric, str) or not known:
        names = ", ".join(m.name for m in REGISTRY)
        c.bad(
            spec.line_of("metric"), f"{label}.metric", f"unknown metric {metric!r}; known: {names}"
        )
    window = spec.get("window", "1m")
    try:
        WindowSpec.parse(str(window))
    except ValueError as e:
        c.bad(spec.line_of("window"), f"{label}.window", str(e))
    if kind in (RuleKind.ANOMALY, RuleKind.FORECAST) and window != "1m":
        c.bad(
            spec.line_of("window"),
            f"{label}.window",
            f"{kind.value} rules read the 1m scores/forecasts: window must be 1m",
        )
    where: tuple[Matcher, ...] = ()
    raw_where = spec.get("where", [])
    if isinstance(raw_where, str | list):
        try:
            where = parse_matchers(raw_where)
        except ValueError as e:
            c.bad(spec.line_of("where"), f"{label}.where", str(e))
    else:
        c.bad(
            spec.line_of("where"),
            f"{label}.where",
            'expected a list of label matchers like seller_id=~"s-1.*"',
        )
    op = spec.get("op", ">")
    if op not in _OPS:
        c.bad(spec.line_of("op"), f"{label}.op", f"expected one of {', '.join(_OPS)}, got {op!r}")
        op = ">"
    threshold = _number(c, spec, "threshold", f"{label}.threshold")
    if threshold is None:
        if kind is RuleKind.ANOMALY and "threshold" not in spec:
            threshold = DEFAULT_SCORE_THRESHOLD
        elif kind in (RuleKind.THRESHOLD, RuleKind.RATE_OF_CHANGE) and "threshold" not in spec:
            c.bad(spec.line, f"{label}.threshold", f"a {kind.value} rule needs a threshold")
    if kind is RuleKind.ANOMALY:
        op = ">="
        if threshold is not None and not 0.0 < threshold <= 1.0:
            c.bad(
                spec.line_of("threshold"),
                f"{label}.threshold",
                f"an anomaly score threshold is in (0, 1], got {threshold}",
            )
    recovery = _number(c, spec, "recovery", f"{label}.recovery")
    if recovery is not None and threshold is not None:
        upward = op in (">", ">=")
        if (upward and recovery > threshold) or (not upward and recovery < threshold):
            side = "at or below" if upward else "at or above"
            c.bad(
                spec.line_of("recovery"),
                f"{label}.recovery",
                f"must be {side} the threshold {threshold} (hysteresis), got {recovery}",
            )
    for_s = _duration(c, spec, "for", f"{label}.for")
    keep_s = _duration(c, spec, "keep_firing_for", f"{label}.keep_firing_for")
    absent_s = _duration(c, spec, "absent_for", f"{label}.absent_for")
    if kind is RuleKind.ABSENCE and absent_s <= 0:
        c.bad(
            spec.line_of("absent_for"),
            f"{label}.absent_for",
            "an absence rule needs absent_for > 0 (like 5m)",
        )
    change = spec.get("change", "relative")
    if change not in ("relative", "absolute"):
        c.bad(
            spec.line_of("change"),
            f"{label}.change",
            f"expected relative or absolute, got {change!r}",
        )
    direction = spec.get("direction", "any")
    if direction not in ("any", "up", "down"):
        c.bad(
            spec.line_of("direction"),
            f"{label}.direction",
            f"expected any, up or down, got {direction!r}",
        )
    interval = spec.get("interval", 95)
    if interval not in (80, 95):
        c.bad(
            spec.line_of("interval"),
            f"{label}.interval",
            f"expected 80 or 95 (percent), got {interval!r}",
        )
    severity = spec.get("severity", "warning")
    if severity not in SEVERITIES:
        c.bad(
            spec.line_of("severity"),
            f"{label}.severity",
            f"expected one of {', '.join(SEVERITIES)}, got {severity!r}",
        )
    labels: dict[str, str] = {}
    raw_labels = spec.get("labels", {})
    if not isinstance(raw_labels, dict):
        c.bad(
            spec.line_of("labels"), f"{label}.labels", "expected a mapping of label name to value"
        )
    else:
        for k, v in raw_labels.items():
            where_line = (
                raw_labels.line_of(k)
                if isinstance(raw_labels, LocatedDict)
                else spec.line_of("labels")
            )
            if not isinstance(k, str) or not _LABEL.fullmatch(k):
                c.bad(where_line, f"{label}.labels", f"{k!r} is not a label name")
            elif k in RESERVED_LABELS:
                c.bad(
                    where_line,
                    f"{label}.labels.{k}",
                    f"{k} is set from the rule and series; use another name",
                )
            elif isinstance(v, dict | list) or v is None:
                c.bad(where_line, f"{label}.labels.{k}", f"a label value is text, got {v!r}")
            else:
                labels[k] = str(v)
    texts = {}
    for key in ("summary", "description"):
        t = spec.get(key, "")
        if not isinstance(t, str):
            c.bad(spec.line_of(key), f"{label}.{key}", f"expected text, got {t!r}")
            continue
        err = _check_template(t)
        if err:
            c.bad(spec.line_of(key), f"{label}.{key}", err)
        texts[key] = t
    if len(c.problems) > before:
        return None
    return Rule(
        name=str(name),
        kind=kind,
        metric=str(metric),
        window=WindowSpec.parse(str(window)).name,
        tenant=tenant,
        where=where,
        op=str(op),
        threshold=float(threshold or 0.0),
        recovery=recovery,
        for_s=for_s,
        keep_firing_for_s=keep_s,
        absent_for_s=absent_s,
        change=str(change),
        direction=str(direction),
        interval=int(interval),
        severity=str(severity),
        labels=labels,
        summary=texts.get("summary", ""),
        description=texts.get("description", ""),
        source=f"{c.file}:{line}",
    )


def _parse(text: str, file: str) -> tuple[list[Rule], list[Problem]]:
    c = _Checker(file)
    try:
        doc = load_located(text)
    except YamlSyntaxError as e:
        c.bad(e.line, "(syntax)", e.message)
        return [], c.problems
    if doc is None:
        return [], []
    if not isinstance(doc, LocatedDict):
        c.bad(1, "(file)", "expected a mapping with rules: [...]")
        return [], c.problems
    for key in doc:
        if key not in ("rules", "tenant"):
            c.bad(
                doc.line_of(key),
                str(key),
                "unknown field; a rule file has tenant (optional) and rules",
            )
    tenant = doc.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not tenant.strip()):
        c.bad(doc.line_of("tenant"), "tenant", f"expected a tenant id, got {tenant!r}")
        tenant = None
    rules_spec = doc.get("rules", [])
    if not isinstance(rules_spec, LocatedList):
        c.bad(doc.line_of("rules"), "rules", "expected a list of rules")
        return [], c.problems
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(rules_spec):
        line = rules_spec.line_at(i)
        rule = _rule(c, spec, line, f"rules[{i}]", tenant)
        if rule is None:
            continue
        if rule.name in seen:
            c.bad(
                line,
                f"rules[{i}].name",
                f"rule {rule.name!r} is already defined at line {seen[rule.name]}",
            )
            continue
        seen[rule.name] = line
        rules.append(rule)
    return rules, sorted(c.problems, key=lambda p: p.line)  # in file order (stable)


def parse_rules(text: str, file: str = "<rules>") -> RuleSet:
    """A ``RuleSet`` from one file's text; ``RuleFileError`` with every problem otherwise."""
    rules, problems = _parse(text, file)
    if problems:
        raise RuleFileError(problems)
    return RuleSet(tuple(rules), (file,))


def rule_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files named: a directory stands for its ``*.yaml``/``*.yml`` (not ``*.test.yaml``)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(
                f
                for f in sorted(p.iterdir())
                if f.suffix in (".yaml", ".yml")
                and not f.name.endswith((".test.yaml", ".test.yml"))
            )
        else:
            out.append(p)
    return out


def check_rule_files(paths: Iterable[str | Path]) -> tuple[RuleSet, list[Problem]]:
    """Every problem of every file (and names defined twice across files), and the good rules."""
    rules: list[Rule] = []
    problems: list[Problem] = []
    files = rule_files(paths)
    where: dict[tuple[str | None, str], str] = {}
    for f in files:
        try:
            text = f.read_text()
        except (OSError, UnicodeDecodeError) as e:
            problems.append(Problem(str(f), 0, "(file)", f"cannot read it: {e}"))
            continue
        got, bad = _parse(text, str(f))
        problems.extend(bad)
        for r in got:
            key = (r.tenant, r.name)
            if key in where:
                file, _, line = r.source.rpartition(":")
                problems.append(
                    Problem(
                        file, int(line), "name", f"rule {r.name!r} is also defined at {where[key]}"
                    )
                )
                continue
            where[key] = r.source
            rules.append(r)
    return RuleSet(tuple(rules), tuple(str(f) for f in files)), problems


def load_rule_files(paths: Iterable[str | Path]) -> RuleSet:
    """The rules of ``paths`` (files or directories); ``RuleFileError`` if any file is bad."""
    rs, problems = check_rule_files(paths)
    if problems:
        raise RuleFileError(problems)
    return rs
