"""Label matchers, as Alertmanager writes them: ``name=value``, ``!=``, ``=~``, ``!~``.

Regexes are anchored (they match the whole value); a label the alert does not
have matches as the empty string, so ``team!=""`` means "has a team".

>>> m = Matcher.parse('severity=~"warn.*|critical"')
>>> m.matches({"severity": "warning"}), m.matches({"severity": "info"})
(True, False)
>>> [str(x) for x in parse_matchers('{team="pay", env!="dev"}')]
['team="pay"', 'env!="dev"']
>>> Matcher.parse("team")
Traceback (most recent call last):
...
ValueError: matcher 'team': expected name, one of = != =~ !~, and a value (like severity="critical")
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["MatchOp", "Matcher", "matches_all", "parse_matchers"]

_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ONE = re.compile(r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*(?P<value>.*?)\s*$")


class MatchOp(enum.StrEnum):
    """How a matcher compares a label's value."""

    EQ = "="
    NE = "!="
    RE = "=~"
    NRE = "!~"


@dataclasses.dataclass(frozen=True)
class Matcher:
    """One label matcher; ``matches`` looks at one label of a label set."""

    name: str
    op: MatchOp
    value: str
    _regex: re.Pattern[str] | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not _LABEL.fullmatch(self.name):
            msg = f"matcher label name {self.name!r} is not a label name ([A-Za-z_][A-Za-z0-9_]*)"
            raise ValueError(msg)
        if self.op in (MatchOp.RE, MatchOp.NRE):
            try:
                compiled = re.compile(f"(?:{self.value})")
            except re.error as e:
                msg = f"matcher {self.name}{self.op}{self.value!r}: bad regular expression: {e}"
                raise ValueError(msg) from e
            object.__setattr__(self, "_regex", compiled)

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """``name=value``, ``name!="v"``, ``name=~"re"``, ``name!~re`` (quotes optional)."""
        m = _ONE.match(text)
        if m is None:
            msg = (
                f"matcher {text!r}: expected name, one of = != =~ !~, and a value "
                '(like severity="critical")'
            )
            raise ValueError(msg)
        value = m["value"]
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        elif '"' in value:
            msg = f"matcher {text!r}: unbalanced quotes in the value"
            raise ValueError(msg)
        return cls(m["name"], MatchOp(m["op"]), value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfies this matcher (a missing label is ``""``)."""
        got = labels.get(self.name, "")
        if self.op is MatchOp.EQ:
            return got == self.value
        if self.op is MatchOp.NE:
            return got != self.value
        assert self._regex is not None
        hit = self._regex.fullmatch(got) is not None
        return hit if self.op is MatchOp.RE else not hit

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op.value}"{escaped}"'


def _split(text: str) -> list[str]:
    """Split ``a="x,y", b=c`` on the commas outside quotes."""
    parts, cur, quoted, escape = [], [], False, False
    for ch in text:
        if escape:
            cur.append(ch)
            escape = False
        elif ch == "\\":
            cur.append(ch)
            escape = True
        elif ch == '"':
            cur.append(ch)
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def parse_matchers(spec: str | Sequence[str]) -> tuple[Matcher, ...]:
    """Matchers from ``'{a="b", c=~"d"}'`` or a list of single matchers."""
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        return tuple(Matcher.parse(p) for p in _split(text))
    return tuple(Matcher.parse(p) for p in spec)


def matches_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """True when every matcher matches (no matchers: everything matches)."""
    return all(m.matches(labels) for m in matchers)
