"""YAML that remembers where each value was: mappings and lists with line numbers.

PyYAML's ``compose`` keeps the node tree (with marks); this builds plain
``dict``/``list`` subclasses from it whose ``line_of(key)`` says on which line
(1-based) a key's value starts, so a checker can name file, line and field.
Scalars are resolved exactly as ``yaml.safe_load`` does.

>>> doc = load_located("a: 1\\nrules:\\n  - name: x\\n    for: 3m\\n")
>>> doc["rules"][0]["for"], doc["rules"][0].line_of("for"), doc["rules"].line_at(0)
('3m', 4, 3)
>>> load_located("a: 1\\n b: 2\\n")
Traceback (most recent call last):
...
linkpulse.alerts.yamlnodes.YamlSyntaxError: line 2: mapping values are not allowed here
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["LocatedDict", "LocatedList", "YamlSyntaxError", "load_located"]


class YamlSyntaxError(ValueError):
    """The text is not YAML; ``line`` is where the parser gave up (1-based)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


class LocatedDict(dict[Any, Any]):
    """A mapping that knows the line of itself and of each of its values."""

    line: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[Any, int] = {}

    def line_of(self, key: Any) -> int:
        """The line of ``key``'s value (the mapping's own line when the key is absent)."""
        return self.lines.get(key, self.line)


class LocatedList(list[Any]):
    """A list that knows the line of itself and of each item."""

    line: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[int] = []

    def line_at(self, index: int) -> int:
        """The line of item ``index``."""
        return self.lines[index] if 0 <= index < len(self.lines) else self.line


_constructor = SafeConstructor()


def _build(node: Node) -> Any:
    if isinstance(node, ScalarNode):
        return _constructor.construct_object(node, deep=True)
    if isinstance(node, SequenceNode):
        seq = LocatedList()
        seq.line = node.start_mark.line + 1
        for item in node.value:
            seq.append(_build(item))
            seq.lines.append(item.start_mark.line + 1)
        return seq
    if isinstance(node, MappingNode):
        _constructor.flatten_mapping(node)  # merge keys (<<) as safe_load does
        out = LocatedDict()
        out.line = node.start_mark.line + 1
        for k, v in node.value:
            key = _build(k)
            if isinstance(key, list | dict):
                msg = f"a mapping key must be a plain value, got {type(key).__name__}"
                raise YamlSyntaxError(k.start_mark.line + 1, msg)
            out[key] = _build(v)
            out.lines[key] = v.start_mark.line + 1
        return out
    msg = f"unexpected YAML node {node!r}"
    raise YamlSyntaxError(node.start_mark.line + 1, msg)


def load_located(text: str) -> Any:
    """The document in ``text`` (None when empty), mappings and lists located."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        parts = [p for p in (e.context, e.problem) if p]
        raise YamlSyntaxError(line, ": ".join(parts) or str(e)) from None
    except yaml.YAMLError as e:
        raise YamlSyntaxError(1, str(e)) from None
    return None if node is None else _build(node)
