"""YAML and JSON documents written by people, read with limits.

A document may be at most `MAX_BYTES` long, nest at most `MAX_DEPTH` levels and hold at most
`MAX_VALUES` values, an alias counted again at every use. So a 2.8 KB YAML alias bomb (which
PyYAML's merge keys expand to billions of values) or 20,000 levels of brackets (a
`RecursionError` deep inside the parser) end in one `DocumentError` line, checked before anything
large is built.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import yaml

MAX_BYTES = 1_000_000
MAX_DEPTH = 50
MAX_VALUES = 100_000


class DocumentError(ValueError):
    """A document that cannot be read: `where` (file, or file:line) and a one-line `reason`."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def load_document(text: str, fmt: Literal["yaml", "json"], source: str) -> Any:
    """The parsed document (plain dicts, lists and scalars), or `DocumentError`."""
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise DocumentError(source, f"larger than {MAX_BYTES:,} bytes")
    if fmt == "json":
        data = _json(text, source)
        _check_tree(data, source)
        return data
    return _yaml(text, source)


def _json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(
            f"{source}:{exc.lineno}", f"invalid JSON: {exc.msg} (column {exc.colno})"
        ) from None
    except RecursionError:
        raise DocumentError(source, f"nested more than {MAX_DEPTH} levels deep") from None


def _check_tree(data: Any, source: str) -> None:
    """Depth and size of parsed JSON, walked without recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise DocumentError(source, f"more than {MAX_VALUES:,} values")
        if depth > MAX_DEPTH:
            raise DocumentError(source, f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _yaml(text: str, source: str) -> Any:
    try:
        _check_events(text, source)  # the composer below recurses once per level
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_nodes(node, source)  # before merge keys and aliases are expanded
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError(where, f"invalid YAML: {problem}") from None


def _check_events(text: str, source: str) -> None:
    """Nesting depth from the event stream, which PyYAML produces without recursion."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark is not None else 0
                raise DocumentError(f"{source}:{line}", f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Values and depth with every alias expanded where it is used, stopping at the budget."""
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise DocumentError(
                source,
                f"more than {MAX_VALUES:,} values once aliases are expanded (an alias bomb?)",
            )
        if depth > MAX_DEPTH:
            raise DocumentError(
                source, f"nested more than {MAX_DEPTH} levels deep (aliases included)"
            )
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
