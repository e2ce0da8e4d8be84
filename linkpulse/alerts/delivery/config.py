"""The notifier's configuration file: the policy, its receivers' contact points, retries.

One YAML document in Alertmanager's shape: ``route``, ``inhibit_rules`` and
``time_intervals`` (``linkpulse.alerts.policy``), ``receivers`` (each a
``name`` and one contact point: ``webhook``, ``slack``, ``pagerduty`` or
``email``) and ``delivery`` (the retry schedule). Every receiver the routing
tree names must be defined; every problem is reported with its field path.
A value ``${NAME}`` is read from the environment variable ``NAME`` (secrets
stay out of the file).

>>> cfg = load_config('''
... route: {receiver: pd, group_wait: 1s}
... receivers:
...   - name: pd
...     pagerduty: {routing_key: abc, url: "http://127.0.0.1:9/v2/enqueue"}
... delivery: {initial_s: 0.5, max_age_s: 60}
... ''')
>>> sorted(cfg.contact_points), cfg.retry.max_age_s
(['pd'], 60.0)
>>> load_config('route: {receiver: nobody}')  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
linkpulse.alerts.policy.PolicyError: receivers: the route names receiver 'nobody', ...
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from linkpulse.alerts.delivery.base import ContactPoint, RetryPolicy
from linkpulse.alerts.delivery.email import EmailContactPoint
from linkpulse.alerts.delivery.pagerduty import EVENTS_URL, PagerDutyContactPoint
from linkpulse.alerts.delivery.slack import SlackContactPoint
from linkpulse.alerts.delivery.webhook import WebhookContactPoint
from linkpulse.alerts.policy import Policy, PolicyError, load_policy

__all__ = ["NotifierConfig", "load_config", "load_config_file"]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_POLICY_KEYS = {"route", "inhibit_rules", "time_intervals"}


@dataclasses.dataclass(frozen=True)
class NotifierConfig:
    """What ``linkpulse run notifier`` runs with."""

    policy: Policy
    contact_points: Mapping[str, ContactPoint]
    retry: RetryPolicy
    link_base: str = ""


def _env(value: Any, field: str, problems: list[tuple[str, str]]) -> Any:
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        got = os.environ.get(m[1])
        if got is None:
            problems.append((field, f"environment variable {m[1]} is not set"))
            return ""
        return got

    return _ENV.sub(sub, value)


def _fields(
    spec: Any, field: str, required: set[str], optional: set[str], problems: list[tuple[str, str]]
) -> dict[str, Any] | None:
    if not isinstance(spec, Mapping):
        problems.append((field, "expected a mapping"))
        return None
    out = {k: _env(v, f"{field}.{k}", problems) for k, v in spec.items()}
    for k in sorted(required - set(out)):
        problems.append((f"{field}.{k}", "required"))
    for k in sorted(set(out) - required - optional):
        problems.append((f"{field}.{k}", "unknown field"))
    for k in required & set(out):
        if out[k] in ("", None, []):
            problems.append((f"{field}.{k}", "must not be empty"))
    return out


def _webhook(name: str, f: dict[str, Any], link: str) -> ContactPoint:
    headers = {str(k): str(v) for k, v in (f.get("headers") or {}).items()}
    return WebhookContactPoint(
        name, str(f["url"]), str(f.get("secret", "")), link, headers, bool(f.get("send_acks"))
    )


def _slack(name: str, f: dict[str, Any], link: str) -> ContactPoint:
    return SlackContactPoint(name, str(f["url"]), link)


def _pagerduty(name: str, f: dict[str, Any], link: str) -> ContactPoint:
    return PagerDutyContactPoint(name, str(f["routing_key"]), str(f.get("url", EVENTS_URL)), link)


def _email(name: str, f: dict[str, Any], link: str) -> ContactPoint:
    to = f["to"] if isinstance(f["to"], list) else [f["to"]]
    host, _, port = str(f["smarthost"]).rpartition(":")
    if not host or not port.isdigit():
        msg = f"smarthost must be host:port, got {f['smarthost']!r}"
        raise ValueError(msg)
    return EmailContactPoint(
        name,
        [str(x) for x in to],
        str(f["from"]),
        host,
        int(port),
        str(f.get("username", "")),
        str(f.get("password", "")),
        bool(f.get("starttls", False)),
        link,
    )


# kind -> (required fields, optional fields, builder)
_KINDS: dict[str, tuple[set[str], set[str], Callable[[str, dict[str, Any], str], ContactPoint]]] = {
    "webhook": ({"url"}, {"secret", "headers", "send_acks"}, _webhook),
    "slack": ({"url"}, set(), _slack),
    "pagerduty": ({"routing_key"}, {"url"}, _pagerduty),
    "email": ({"to", "from", "smarthost"}, {"username", "password", "starttls"}, _email),
}


def load_config(source: str | Mapping[str, Any]) -> NotifierConfig:
    """A ``NotifierConfig`` from YAML text or its mapping; ``PolicyError`` lists every problem."""
    import yaml

    data: Any = source
    if isinstance(source, str):
        try:
            data = yaml.safe_load(source)
        except yaml.YAMLError as e:
            raise PolicyError([("config", f"not YAML: {e}")]) from None
    if not isinstance(data, Mapping):
        raise PolicyError([("config", "expected a mapping with route and receivers")])
    problems: list[tuple[str, str]] = [
        (k, "unknown field")
        for k in sorted(set(data) - _POLICY_KEYS - {"receivers", "delivery", "link_base"})
    ]
    policy: Policy | None = None
    try:
        policy = load_policy({k: v for k, v in data.items() if k in _POLICY_KEYS})
    except PolicyError as e:
        problems.extend(e.problems)
    link = str(data.get("link_base") or "")
    points: dict[str, ContactPoint] = {}
    receivers = data.get("receivers") or []
    if not isinstance(receivers, list):
        problems.append(("receivers", "expected a list of {name, <kind>: {...}}"))
        receivers = []
    for i, r in enumerate(receivers):
        field = f"receivers[{i}]"
        if not isinstance(r, Mapping) or not isinstance(r.get("name"), str) or not r["name"]:
            problems.append((f"{field}.name", "each receiver needs a name"))
            continue
        name = r["name"]
        kinds = [k for k in r if k != "name"]
        if name in points:
            problems.append((f"{field}.name", f"receiver {name!r} is defined twice"))
        if len(kinds) != 1 or kinds[0] not in _KINDS:
            problems.append(
                (field, f"expected exactly one of {', '.join(sorted(_KINDS))}, got {kinds}")
            )
            continue
        required, optional, build = _KINDS[kinds[0]]
        before = len(problems)
        fields = _fields(r[kinds[0]], f"{field}.{kinds[0]}", required, optional, problems)
        if fields is None or len(problems) > before:
            continue
        try:
            points[name] = build(name, fields, link)
        except ValueError as e:
            problems.append((f"{field}.{kinds[0]}", str(e)))
    if policy is not None:
        for name in sorted(policy.receivers - set(points)):
            problems.append(("receivers", f"the route names receiver {name!r}, not defined here"))
    delivery = data.get("delivery") or {}
    retry = RetryPolicy()
    if not isinstance(delivery, Mapping):
        problems.append(("delivery", "expected a mapping"))
    else:
        known = {f.name for f in dataclasses.fields(RetryPolicy)}
        problems.extend((f"delivery.{k}", "unknown field") for k in sorted(set(delivery) - known))
        try:
            retry = RetryPolicy(**{k: float(v) for k, v in delivery.items() if k in known})
        except (TypeError, ValueError) as e:
            problems.append(("delivery", str(e)))
    if problems or policy is None:
        raise PolicyError(problems)
    return NotifierConfig(policy, points, retry, link)


def load_config_file(path: Path) -> NotifierConfig:
    """``load_config`` of a file, its problems prefixed with the file's name."""
    try:
        text = path.read_text()
    except OSError as e:
        raise PolicyError([(str(path), f"cannot read: {e.strerror}")]) from None
    try:
        return load_config(text)
    except PolicyError as e:
        raise PolicyError([(f"{path}: {f}", m) for f, m in e.problems]) from None
