"""`--set dotted.key=value` overrides on a raw recipe mapping (typed later by the schema)."""

from __future__ import annotations

import copy

import yaml

from compress.errors import UserError
from compress.user_input import clip, quote, safe_load


def parse_override(text: str) -> tuple[list[str], object]:
    """'stages.finetune.epochs=1' -> (['stages', 'finetune', 'epochs'], 1).

    Values are YAML, read with the recipe file's bounds; text that is not YAML stays a string.
    """
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(part.strip() for part in parts):
        raise UserError(f"--set {quote(text)}: expected dotted.key=value, e.g. stages.finetune.epochs=1")
    try:
        parsed = safe_load(value, f"--set {quote(text)}") if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return [part.strip() for part in parts], parsed


def _stage_by_name(raw: dict, name: str, text: str) -> dict:
    listed = raw.get("stages")
    stages = [stage for stage in listed if isinstance(stage, dict)] if isinstance(listed, list) else []
    for stage in stages:
        if stage.get("name") == name:
            return stage
    names = ", ".join(quote(stage.get("name")) for stage in stages)
    raise UserError(f"--set {quote(text)}: no stage named {quote(name)} (stages: {clip(names)})")


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """A copy of `raw` with each override applied; stages are addressed by name."""
    result = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        if parts[0] == "stages":
            if len(parts) < 3:
                raise UserError(f"--set {quote(text)}: address a stage key as stages.<stage name>.<key>")
            node, parts = _stage_by_name(result, parts[1], text), parts[2:]
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {quote(text)}: {quote(part)} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result
