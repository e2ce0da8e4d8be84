"""The notification policy, pure: routing tree, groups, dedup, silences, inhibition, mute times.

Alertmanager's semantics (its documentation and ``dispatch/route.go``,
``notify``, ``inhibit``, ``silence``), re-written for linkpulse's
``AlertChange``; nothing here does I/O or reads the clock: the notifier
service (``linkpulse.alerts.notifier``) feeds changes in, asks what is due at
``now``, delivers, and says what it delivered.

* **Routing.** A tree of routes; an alert enters at the root (which matches
  everything) and goes down to the first child whose matchers match, and on to
  later siblings only when that child has ``continue: true``; a node none of
  whose children match takes the alert itself. Children inherit ``receiver``,
  ``group_by``, ``group_wait``, ``group_interval``, ``repeat_interval`` and the
  time intervals they do not set. ``group_by: ["..."]`` groups by every label.
* **Groups.** Alerts of one route with equal ``group_by`` labels form a
  group. A new group waits ``group_wait`` before its first notification
  (gathering its siblings), then is looked at every ``group_interval``.
* **Dedup.** A group notifies its receiver only when the set of firing alerts
  has something the last notification did not have, when alerts resolved
  (``send_resolved``), or when ``repeat_interval`` passed since the last
  notification of an unchanged set; a group that was all acknowledged does not
  repeat. Identity is the incident (``alert_id``).
* **Silences** mute the alerts all of whose matchers they match, between
  ``starts_at`` and ``ends_at``. **Inhibition**: an active alert matching a
  rule's ``source_matchers`` mutes the alerts matching its ``target_matchers``
  that have the same values of the ``equal`` labels (an alert never inhibits
  itself). **Mute time intervals** hold a route's notifications while one of
  its intervals contains ``now``; ``active_time_intervals`` hold them while
  none does. Muted alerts are left out of a notification, and a group whose
  alerts are all muted notifies nothing (and records nothing, so the page goes
  out once the mute ends).

>>> policy = load_policy('''
... route:
...   receiver: oncall
...   group_by: [alertname, tenant]
...   group_wait: 30s
...   routes:
...     - matchers: ['severity="warning"']
...       receiver: slack
... ''')
>>> [r.receiver for r in policy.routes_for({"severity": "warning"})]
['slack']
>>> [r.receiver for r in policy.routes_for({"severity": "critical"})]
['oncall']
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from linkpulse.alerts.durations import parse_duration
from linkpulse.alerts.matchers import Matcher, matches_all, parse_matchers
from linkpulse.alerts.types import AlertChange, AlertState

__all__ = [
    "Dispatcher",
    "InhibitRule",
    "Notification",
    "Policy",
    "PolicyError",
    "Route",
    "Silence",
    "TimeInterval",
    "load_policy",
]

ALL_LABELS = "..."


class PolicyError(ValueError):
    """A policy or silence that cannot be used; ``problems`` are ``(field, message)``."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{f}: {m}" for f, m in self.problems))


# -- time intervals --------------------------------------------------------------------------

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = (
    "january february march april may june july august september october november december"
).split()


def _hhmm(text: str, field: str) -> int:
    h, sep, m = str(text).partition(":")
    if not (sep and h.isdigit() and m.isdigit() and len(m) == 2):
        raise PolicyError([(field, f"expected HH:MM, got {text!r}")])
    minutes = int(h) * 60 + int(m)
    if not (0 <= int(m) < 60 and 0 <= minutes <= 24 * 60):
        raise PolicyError([(field, f"time {text!r} is outside 00:00-24:00")])
    return minutes


def _ranges(
    items: Sequence[Any], field: str, names: Sequence[str] | None, lo: int, hi: int
) -> tuple[tuple[int, int], ...]:
    """``["monday:friday", "sunday"]`` / ``["1:5", "-1"]`` -> inclusive ranges."""

    def one(x: str) -> int:
        x = x.strip().lower()
        if names is not None and x in names:
            return names.index(x) + lo
        try:
            v = int(x)
        except ValueError:
            raise PolicyError([(field, f"unknown value {x!r}")]) from None
        if not (lo <= v <= hi or (lo == 1 and hi == 31 and -31 <= v <= -1)):
            raise PolicyError([(field, f"{v} is outside {lo}..{hi}")])
        return v

    out = []
    for item in items:
        a, _, b = str(item).partition(":") if not str(item).startswith("-") else (str(item), "", "")
        if str(item).startswith("-") and ":" in str(item)[1:]:
            a, _, b = str(item).rpartition(":")
        start = one(a)
        end = one(b) if b else start
        out.append((start, end))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class TimeInterval:
    """One Alertmanager time interval: every given part must contain the instant.

    ``times`` are ``[start, end)`` minutes of the day; ``weekdays`` 0=Monday;
    ``days_of_month`` may count from the end (-1 = last day); all in ``location``.

    >>> night = TimeInterval.parse({"times": [{"start_time": "22:00", "end_time": "24:00"}]})
    >>> from datetime import UTC, datetime
    >>> night.contains(datetime(2026, 11, 24, 23, 0, tzinfo=UTC))
    True
    """

    times: tuple[tuple[int, int], ...] = ()
    weekdays: tuple[tuple[int, int], ...] = ()
    days_of_month: tuple[tuple[int, int], ...] = ()
    months: tuple[tuple[int, int], ...] = ()
    years: tuple[tuple[int, int], ...] = ()
    location: str = "UTC"

    @classmethod
    def parse(cls, spec: Mapping[str, Any], field: str = "time_interval") -> TimeInterval:
        """From the YAML mapping (``times``, ``weekdays``, ``days_of_month``, ``months``, ...)."""
        if not isinstance(spec, Mapping):
            raise PolicyError([(field, f"expected a mapping, got {spec!r}")])
        unknown = set(spec) - {"times", "weekdays", "days_of_month", "months", "years", "location"}
        if unknown:
            raise PolicyError([(f"{field}.{k}", "unknown field") for k in sorted(unknown)])
        times = []
        for i, t in enumerate(spec.get("times") or []):
            f = f"{field}.times[{i}]"
            if not isinstance(t, Mapping):
                raise PolicyError([(f, "expected {start_time, end_time}")])
            a = _hhmm(t.get("start_time", ""), f"{f}.start_time")
            b = _hhmm(t.get("end_time", ""), f"{f}.end_time")
            if b <= a:
                raise PolicyError([(f, "end_time must be after start_time")])
            times.append((a, b))
        location = str(spec.get("location", "UTC"))
        try:
            ZoneInfo(location)
        except (ZoneInfoNotFoundError, ValueError):
            raise PolicyError([(f"{field}.location", f"unknown time zone {location!r}")]) from None
        return cls(
            times=tuple(times),
            weekdays=_ranges(spec.get("weekdays") or [], f"{field}.weekdays", _WEEKDAYS, 0, 6),
            days_of_month=_ranges(
                spec.get("days_of_month") or [], f"{field}.days_of_month", None, 1, 31
            ),
            months=_ranges(spec.get("months") or [], f"{field}.months", _MONTHS, 1, 12),
            years=_ranges(spec.get("years") or [], f"{field}.years", None, 1, 9999),
            location=location,
        )

    def contains(self, at: datetime) -> bool:
        """Whether the instant ``at`` (aware) lies in this interval."""
        t = at.astimezone(ZoneInfo(self.location))
        minute = t.hour * 60 + t.minute
        if self.times and not any(a <= minute < b for a, b in self.times):
            return False
        if self.weekdays and not any(a <= t.weekday() <= b for a, b in self.weekdays):
            return False
        if self.days_of_month:
            last = ((t.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)).day

            def pos(d: int) -> int:
                return d if d > 0 else last + 1 + d

            if not any(pos(a) <= t.day <= pos(b) for a, b in self.days_of_month):
                return False
        if self.months and not any(a <= t.month <= b for a, b in self.months):
            return False
        return not (self.years and not any(a <= t.year <= b for a, b in self.years))


# -- routes ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Route:
    """One node of the routing tree, with its inherited settings filled in.

    ``id`` is its path (``"0"`` the root, ``"0.1"`` its second child): part of
    every group key, so two routes never share a group.
    """

    id: str
    receiver: str
    matchers: tuple[Matcher, ...] = ()
    group_by: tuple[str, ...] | None = ()  # None: every label ("...")
    group_wait: float = 30.0
    group_interval: float = 300.0
    repeat_interval: float = 4 * 3600.0
    send_resolved: bool = True
    continue_: bool = False
    mute_time_intervals: tuple[str, ...] = ()
    active_time_intervals: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()

    def match(self, labels: Mapping[str, str]) -> list[Route]:
        """The routes (this one or descendants) that take an alert with ``labels``."""
        if not matches_all(self.matchers, labels):
            return []
        found: list[Route] = []
        for child in self.routes:
            got = child.match(labels)
            found.extend(got)
            if got and not child.continue_:
                break
        return found or [self]

    def group_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        """The labels that decide which group of this route an alert joins."""
        if self.group_by is None:
            return dict(labels)
        return {k: labels[k] for k in self.group_by if k in labels}

    def group_key(self, labels: Mapping[str, str]) -> str:
        """``<route id>:{k="v",...}``: names one group of this route."""
        g = self.group_labels(labels)
        inner = ",".join(f'{k}="{g[k]}"' for k in sorted(g))
        return f"{self.id}:{{{inner}}}"


@dataclasses.dataclass(frozen=True)
class InhibitRule:
    """An active source alert mutes target alerts with the same ``equal`` labels."""

    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()

    def mutes(self, target: Mapping[str, str], source: Mapping[str, str]) -> bool:
        """Whether ``source`` (an active alert) inhibits ``target`` under this rule."""
        if not (matches_all(self.target, target) and matches_all(self.source, source)):
            return False
        if any(target.get(k, "") != source.get(k, "") for k in self.equal):
            return False
        # an alert matching both sides does not inhibit its like (Alertmanager's
        # "two-sided" exclusion): a critical never mutes itself
        return not (matches_all(self.target, source) and matches_all(self.source, target))


class Silence(msgspec.Struct, frozen=True, kw_only=True):
    """A silence: label matchers (text, like ``severity="warning"``), a period, who and why.

    ``id`` is the store's; ``validate`` names every problem (the API's 422).

    >>> from datetime import UTC, datetime
    >>> s = Silence(id="1", matchers=['tenant="acme"'], starts_at=datetime(2026, 1, 1, tzinfo=UTC),
    ...     ends_at=datetime(2026, 1, 2, tzinfo=UTC), created_by="ops", comment="maintenance")
    >>> s.mutes({"tenant": "acme"}, datetime(2026, 1, 1, 12, tzinfo=UTC))
    True
    >>> s.mutes({"tenant": "acme"}, datetime(2026, 1, 2, tzinfo=UTC))
    False
    """

    id: str
    matchers: list[str]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str

    def validate(self) -> tuple[Matcher, ...]:
        """The parsed matchers; ``PolicyError`` naming each bad field otherwise."""
        problems: list[tuple[str, str]] = []
        parsed: list[Matcher] = []
        if not self.matchers:
            problems.append(("matchers", "a silence needs at least one matcher"))
        for i, text in enumerate(self.matchers):
            try:
                parsed.append(Matcher.parse(text))
            except ValueError as e:
                problems.append((f"matchers[{i}]", str(e)))
        if parsed and all(m.matches({}) for m in parsed):
            problems.append(
                ("matchers", "these matchers match every alert (even one with no labels)")
            )
        if self.ends_at <= self.starts_at:
            problems.append(("ends_at", "must be after starts_at"))
        if not self.created_by.strip():
            problems.append(("created_by", "must not be empty"))
        if not self.comment.strip():
            problems.append(("comment", "must not be empty"))
        if problems:
            raise PolicyError(problems)
        return tuple(parsed)

    def active(self, now: datetime) -> bool:
        """``starts_at <= now < ends_at``."""
        return self.starts_at <= now < self.ends_at

    def mutes(self, labels: Mapping[str, str], now: datetime) -> bool:
        """Active at ``now`` and every matcher matches ``labels``."""
        return self.active(now) and matches_all(parse_matchers(self.matchers), labels)


@dataclasses.dataclass(frozen=True)
class Policy:
    """A routing tree, inhibition rules and named time intervals."""

    route: Route
    inhibit_rules: tuple[InhibitRule, ...] = ()
    time_intervals: Mapping[str, tuple[TimeInterval, ...]] = dataclasses.field(default_factory=dict)

    @property
    def receivers(self) -> frozenset[str]:
        """Every receiver name the tree uses."""
        out: set[str] = set()
        todo = [self.route]
        while todo:
            r = todo.pop()
            out.add(r.receiver)
            todo.extend(r.routes)
        return frozenset(out)

    def routes_for(self, labels: Mapping[str, str]) -> list[Route]:
        """The routes taking an alert (at least the root)."""
        return self.route.match(labels)

    def inhibited(self, labels: Mapping[str, str], active: Iterable[Mapping[str, str]]) -> bool:
        """Whether one of the ``active`` alerts' label sets inhibits ``labels``."""
        sources = list(active)
        return any(r.mutes(labels, s) for r in self.inhibit_rules for s in sources)

    def muted_at(self, route: Route, at: datetime) -> bool:
        """Whether ``route``'s notifications are held at ``at`` (mute / active intervals)."""
        for name in route.mute_time_intervals:
            if any(t.contains(at) for t in self.time_intervals.get(name, ())):
                return True
        if route.active_time_intervals:
            return not any(
                t.contains(at)
                for name in route.active_time_intervals
                for t in self.time_intervals.get(name, ())
            )
        return False


# -- loading ---------------------------------------------------------------------------------

_ROUTE_KEYS = {
    "receiver",
    "matchers",
    "group_by",
    "group_wait",
    "group_interval",
    "repeat_interval",
    "send_resolved",
    "continue",
    "mute_time_intervals",
    "active_time_intervals",
    "routes",
}


def _seconds(value: Any, field: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise PolicyError([(field, str(e))]) from None


def _route(
    spec: Any, field: str, path: str, parent: Route | None, intervals: Mapping[str, Any]
) -> Route:
    if not isinstance(spec, Mapping):
        raise PolicyError([(field, f"expected a mapping, got {spec!r}")])
    problems = [(f"{field}.{k}", "unknown field") for k in sorted(set(spec) - _ROUTE_KEYS)]
    receiver = spec.get("receiver", parent.receiver if parent else None)
    if not isinstance(receiver, str) or not receiver:
        problems.append((f"{field}.receiver", "a receiver name is required (at the root)"))
    try:
        matchers = parse_matchers(spec.get("matchers") or [])
    except ValueError as e:
        problems.append((f"{field}.matchers", str(e)))
        matchers = ()
    if parent is None and matchers:
        problems.append((f"{field}.matchers", "the root route matches every alert: no matchers"))
    group_by: tuple[str, ...] | None
    raw = spec.get("group_by")
    if raw is None:
        group_by = parent.group_by if parent else ()
    elif not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        problems.append((f"{field}.group_by", "expected a list of label names"))
        group_by = ()
    else:
        group_by = None if ALL_LABELS in raw else tuple(raw)
    names: dict[str, tuple[str, ...]] = {}
    for key in ("mute_time_intervals", "active_time_intervals"):
        got = spec.get(key)
        if got is None:
            names[key] = getattr(parent, key) if parent else ()
            continue
        if not isinstance(got, list):
            problems.append((f"{field}.{key}", "expected a list of time interval names"))
            names[key] = ()
            continue
        for n in got:
            if n not in intervals:
                problems.append((f"{field}.{key}", f"no time interval named {n!r}"))
        names[key] = tuple(str(n) for n in got)
    timing = {}
    defaults = {"group_wait": 30.0, "group_interval": 300.0, "repeat_interval": 14400.0}
    for key, default in defaults.items():
        if key in spec:
            try:
                timing[key] = _seconds(spec[key], f"{field}.{key}")
            except PolicyError as e:
                problems.extend(e.problems)
                timing[key] = default
        else:
            timing[key] = getattr(parent, key) if parent else default
    node = Route(
        id=path,
        receiver=str(receiver),
        matchers=matchers,
        group_by=group_by,
        group_wait=timing["group_wait"],
        group_interval=timing["group_interval"],
        repeat_interval=timing["repeat_interval"],
        send_resolved=bool(spec.get("send_resolved", parent.send_resolved if parent else True)),
        continue_=bool(spec.get("continue", False)),
        mute_time_intervals=names["mute_time_intervals"],
        active_time_intervals=names["active_time_intervals"],
    )
    children = spec.get("routes") or []
    if not isinstance(children, list):
        problems.append((f"{field}.routes", "expected a list of routes"))
        children = []
    kids = []
    for i, c in enumerate(children):
        try:
            kids.append(_route(c, f"{field}.routes[{i}]", f"{path}.{i}", node, intervals))
        except PolicyError as e:
            problems.extend(e.problems)  # every problem of the tree at once
    if problems:
        raise PolicyError(problems)
    return dataclasses.replace(node, routes=tuple(kids))


def load_policy(source: str | Mapping[str, Any]) -> Policy:
    """A ``Policy`` from YAML text or its mapping: ``route``, ``inhibit_rules``, ``time_intervals``.

    Every problem is reported at once (``PolicyError.problems``, field paths).
    """
    import yaml

    data: Any = source
    if isinstance(source, str):
        try:
            data = yaml.safe_load(source)
        except yaml.YAMLError as e:
            raise PolicyError([("policy", f"not YAML: {e}")]) from None
    if not isinstance(data, Mapping):
        raise PolicyError([("policy", "expected a mapping with a route")])
    problems: list[tuple[str, str]] = [
        (k, "unknown field")
        for k in sorted(set(data) - {"route", "inhibit_rules", "time_intervals"})
    ]
    intervals: dict[str, tuple[TimeInterval, ...]] = {}
    for i, ti in enumerate(data.get("time_intervals") or []):
        f = f"time_intervals[{i}]"
        if not isinstance(ti, Mapping) or not isinstance(ti.get("name"), str):
            problems.append((f, "expected {name, time_intervals: [...]}"))
            continue
        try:
            intervals[ti["name"]] = tuple(
                TimeInterval.parse(x, f"{f}.time_intervals[{j}]")
                for j, x in enumerate(ti.get("time_intervals") or [])
            )
        except PolicyError as e:
            problems.extend(e.problems)
    route: Route | None = None
    if "route" not in data:
        problems.append(("route", "a policy needs a root route"))
    else:
        try:
            route = _route(data["route"], "route", "0", None, intervals)
        except PolicyError as e:
            problems.extend(e.problems)
    rules = []
    for i, r in enumerate(data.get("inhibit_rules") or []):
        f = f"inhibit_rules[{i}]"
        if not isinstance(r, Mapping):
            problems.append((f, "expected a mapping"))
            continue
        try:
            src = parse_matchers(r.get("source_matchers") or [])
            tgt = parse_matchers(r.get("target_matchers") or [])
        except ValueError as e:
            problems.append((f, str(e)))
            continue
        if not src or not tgt:
            problems.append((f, "source_matchers and target_matchers are both required"))
            continue
        rules.append(InhibitRule(src, tgt, tuple(str(x) for x in r.get("equal") or [])))
    if problems or route is None:
        raise PolicyError(problems)
    return Policy(route, tuple(rules), intervals)


# -- dispatch: groups, dedup, notifications ---------------------------------------------------


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """What one receiver is to be told about one group, now.

    ``idempotency_key`` depends only on the content (receiver, group and the
    incidents firing and resolved), so the same notification re-sent after a
    crash carries the same key.
    """

    receiver: str
    route_id: str
    group_key: str
    group_labels: dict[str, str]
    firing: list[AlertChange]
    resolved: list[AlertChange]
    at: datetime
    idempotency_key: str


class _LogEntry(msgspec.Struct, kw_only=True):
    firing: list[str]
    resolved: list[str]
    at: datetime
    all_acked: bool = False


class _Group(msgspec.Struct, kw_only=True):
    route_id: str
    labels: dict[str, str]
    alerts: dict[str, AlertChange]  # alert_id -> newest change
    next_flush: datetime
    flushed: bool = False


class DispatcherState(msgspec.Struct, kw_only=True):
    """The dispatcher's whole state, for the notifier to persist (msgspec-encodable)."""

    groups: dict[str, _Group] = {}
    log: dict[str, _LogEntry] = {}  # "<receiver>|<group key>" -> last delivered


def _key(receiver: str, group_key: str) -> str:
    return f"{receiver}|{group_key}"


class Dispatcher:
    """Routes changes into groups and says which notifications are due (pure, clocked by you).

    >>> from datetime import UTC, datetime, timedelta
    >>> policy = load_policy({"route": {"receiver": "pd", "group_by": ["alertname"],
    ...     "group_wait": "30s", "group_interval": "5m"}})
    >>> d = Dispatcher(policy)
    >>> t0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    >>> a = AlertChange(alert_id="f-1", fingerprint="f", rule="r", kind="threshold", tenant="acme",
    ...     series="acme|orders||1m", state=AlertState.FIRING, previous=AlertState.PENDING, at=t0,
    ...     active_at=t0, labels={"alertname": "r"})
    >>> d.ingest(a, t0)
    >>> d.due(t0 + timedelta(seconds=10))
    []
    >>> [n.receiver for n in d.due(t0 + timedelta(seconds=30))]
    ['pd']
    """

    def __init__(self, policy: Policy, state: DispatcherState | None = None) -> None:
        self.policy = policy
        self.state = state or DispatcherState()
        self._routes = {}
        todo = [policy.route]
        while todo:
            r = todo.pop()
            self._routes[r.id] = r
            todo.extend(r.routes)

    def ingest(self, change: AlertChange, now: datetime) -> None:
        """Take one alert change (newer states of an incident replace older ones)."""
        if change.state in (AlertState.PENDING, AlertState.INACTIVE):
            return  # never notified: pending has not fired, inactive never did
        for route in self.policy.routes_for(change.labels):
            gkey = route.group_key(change.labels)
            g = self.state.groups.get(gkey)
            if g is None:
                if not change.is_active:
                    continue  # a resolve for a group we no longer hold: nothing to say
                wait = timedelta(seconds=route.group_wait)
                # an alert that has been firing longer than group_wait goes out at once
                first = max(now, (change.fired_at or change.at) + wait)
                g = _Group(
                    route_id=route.id,
                    labels=route.group_labels(change.labels),
                    alerts={},
                    next_flush=min(first, now + wait),
                )
                self.state.groups[gkey] = g
            old = g.alerts.get(change.alert_id)
            if old is None or (change.at, change.revision) >= (old.at, old.revision):
                g.alerts[change.alert_id] = change

    def next_due(self) -> datetime | None:
        """When ``due`` next has something to look at (None: no group)."""
        return min((g.next_flush for g in self.state.groups.values()), default=None)

    def due(
        self,
        now: datetime,
        silences: Sequence[Silence] = (),
        active: Iterable[Mapping[str, str]] | None = None,
    ) -> list[Notification]:
        """The notifications due at ``now``; call ``delivered`` for each one sent.

        ``active`` are the label sets of every active alert (the inhibition
        sources); by default, those the dispatcher holds.
        """
        sources: list[Mapping[str, str]] = (
            list(active)
            if active is not None
            else [
                a.labels
                for g in self.state.groups.values()
                for a in g.alerts.values()
                if a.is_active
            ]
        )
        out: list[Notification] = []
        for gkey in sorted(self.state.groups):
            g = self.state.groups[gkey]
            if g.next_flush > now:
                continue
            route = self._routes.get(g.route_id)
            if route is None:  # the policy changed under a persisted group
                del self.state.groups[gkey]
                continue
            g.next_flush = now + timedelta(seconds=route.group_interval)
            g.flushed = True
            n = self._flush(route, gkey, g, now, silences, sources)
            if n is not None:
                out.append(n)
        return out

    def _flush(
        self,
        route: Route,
        gkey: str,
        g: _Group,
        now: datetime,
        silences: Sequence[Silence],
        sources: list[Mapping[str, str]],
    ) -> Notification | None:
        if self.policy.muted_at(route, now):
            return None
        shown = [
            a
            for a in g.alerts.values()
            if not any(s.mutes(a.labels, now) for s in silences)
            and not (
                a.is_active
                and self.policy.inhibited(a.labels, [s for s in sources if s != a.labels])
            )
        ]
        firing = sorted((a for a in shown if a.is_active), key=lambda a: a.alert_id)
        entry = self.state.log.get(_key(route.receiver, gkey))
        # resolves only for incidents this receiver was told fired (one fired and
        # resolved between two flushes was never seen: no resolve for it either)
        told = set(entry.firing) if entry else set()
        resolved = sorted(
            (a for a in shown if not a.is_active and a.alert_id in told), key=lambda a: a.alert_id
        )
        if not firing and not resolved and len(shown) < len(g.alerts):
            return (
                None  # everything left is muted (silenced, inhibited): as Alertmanager, say nothing
            )
        if not self._needs_update(route, entry, firing, resolved, now):
            self._forget_resolved(g, gkey, entry)
            return None
        if not firing and not route.send_resolved:
            # all resolved, and this receiver is not told resolves: done, silently
            self.state.log.pop(_key(route.receiver, gkey), None)
            self._forget_resolved(g, gkey, None)
            return None
        ids = (
            [a.alert_id for a in firing],
            [a.alert_id for a in resolved] if route.send_resolved else [],
        )
        digest = hashlib.sha256(
            f"{route.receiver}|{gkey}|{','.join(ids[0])}|{','.join(ids[1])}".encode()
        ).hexdigest()[:32]
        return Notification(
            receiver=route.receiver,
            route_id=route.id,
            group_key=gkey,
            group_labels=dict(g.labels),
            firing=firing,
            resolved=resolved if route.send_resolved else [],
            at=now,
            idempotency_key=digest,
        )

    @staticmethod
    def _needs_update(
        route: Route,
        entry: _LogEntry | None,
        firing: list[AlertChange],
        resolved: list[AlertChange],
        now: datetime,
    ) -> bool:
        ids = {a.alert_id for a in firing}
        if entry is None:
            return bool(firing)
        if not ids <= set(entry.firing):
            return True  # something new fires
        if not firing:
            # all resolved: tell the receiver if it had been told they fired
            return bool(entry.firing)
        if route.send_resolved and not {a.alert_id for a in resolved} <= set(entry.resolved):
            return True
        if all(a.state is AlertState.ACKNOWLEDGED for a in firing):
            return False  # someone is on it: no repeats
        return now - entry.at >= timedelta(seconds=route.repeat_interval)

    def _forget_resolved(self, g: _Group, gkey: str, entry: _LogEntry | None) -> None:
        """Drop resolved alerts the receiver never heard fire (or already heard resolve)."""
        told = set(entry.firing) if entry else set()
        for aid, c in list(g.alerts.items()):
            if not c.is_active and aid not in told:
                del g.alerts[aid]
        if not g.alerts:
            del self.state.groups[gkey]

    def delivered(self, n: Notification) -> None:
        """Record that ``n`` reached its receiver (the dedup log); sent resolves leave."""
        key = _key(n.receiver, n.group_key)
        self.state.log[key] = _LogEntry(
            firing=[a.alert_id for a in n.firing],
            resolved=[a.alert_id for a in n.resolved],
            at=n.at,
            all_acked=bool(n.firing) and all(a.state is AlertState.ACKNOWLEDGED for a in n.firing),
        )
        g = self.state.groups.get(n.group_key)
        if g is None:
            return
        sent = {a.alert_id: a for a in (*n.firing, *n.resolved)}
        for aid, cur in list(g.alerts.items()):
            # a resolve that went out (and was not superseded meanwhile) is done
            if not cur.is_active and aid in sent and sent[aid].at == cur.at:
                del g.alerts[aid]
        if not g.alerts:
            del self.state.groups[n.group_key]
            if not n.firing:
                self.state.log.pop(key, None)
