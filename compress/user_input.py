"""Hostile-input guards: YAML read with bounds, and user values quoted short in messages.

`safe_load` is `yaml.safe_load` that refuses what a recipe never needs and an attacker
uses: text over 1 MB, nesting deeper than 50 levels, more than 10,000 values with aliases
counted as expanded ("billion laughs"), an alias inside its own anchor, and duplicate keys
(YAML would keep the last one silently). Each refusal is one `UserError` line naming the
source and the line.
"""

from __future__ import annotations

import reprlib
from collections.abc import Hashable
from typing import Any

import yaml

from compress.errors import UserError

MAX_YAML_CHARS = 1_000_000
MAX_DEPTH = 50
MAX_VALUES = 10_000  # scalars and collections, aliases expanded; a recipe has about a hundred
_MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *base` may override keys: not a duplicate


def clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters, '...' marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote(value: object, limit: int = 80) -> str:
    """A user value for a message: its repr, one line, at most `limit` characters, in bounded time."""
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = limit
    try:
        return clip(shortener.repr(value), limit)
    except ValueError:  # an int past Python's 4300-digit str limit
        return f"<{type(value).__name__} too long to show>"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts depth and values (aliases expanded) as it composes; refuses duplicate keys."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source
        self.depth = 0
        self.values = 0
        self.expanded_size: dict[yaml.Node, int] = {}  # anchored node -> values it stands for

    def refuse(self, problem: str, mark: yaml.Mark) -> UserError:
        return UserError(f"{self.source} (line {mark.line + 1}, column {mark.column + 1}): {problem}")

    def count(self, values: int, mark: yaml.Mark) -> None:
        self.values += values
        if self.values > MAX_VALUES:
            raise self.refuse(
                f"more than {MAX_VALUES} values (aliases count as expanded); a recipe needs far fewer", mark
            )

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if node not in self.expanded_size:
                raise self.refuse(f"alias *{clip(event.anchor)} is inside its own anchor", event.start_mark)
            self.count(self.expanded_size[node], event.start_mark)
            return node
        if self.depth == MAX_DEPTH:
            raise self.refuse(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self.depth += 1
        before = self.values
        self.count(1, event.start_mark)
        node = super().compose_node(parent, index)
        self.depth -= 1
        if event.anchor is not None:
            self.expanded_size[node] = self.values - before
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except ValueError as error:  # int() past 4300 digits, a date like 2024-13-45
            raise self.refuse(f"unreadable value: {clip(str(error))}", node.start_mark) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeLoader refuses unhashable keys itself
            if key in first_line:
                raise self.refuse(
                    f"duplicate key {quote(key)} (first at line {first_line[key]}); "
                    "each key may appear once in a mapping",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str, source: str) -> Any:
    """`yaml.safe_load` within the bounds above; refusals are `UserError`s naming `source`.

    YAML syntax errors stay `yaml.YAMLError`s, for the caller to report or fall back on.
    """
    if len(text) > MAX_YAML_CHARS:
        raise UserError(f"{source}: more than {MAX_YAML_CHARS} characters of YAML; a recipe is far smaller")
    loader = _BoundedLoader(text, source)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
