"""`--set dotted.key=value` overrides on a raw recipe mapping (typed later by the schema).

A recipe may say how it changes for a given model, applied before the user's overrides:

    model: roberta-base
    model_settings:
      minilm: {stages.finetune.lr: 1.0e-4}   # with --set model=minilm (or model: minilm)
"""

from __future__ import annotations

import copy

import yaml

from compress.errors import UserError
from compress.user_input import clip, quote, safe_load

MODEL_SETTINGS = "model_settings"


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


def _stage_by_name(raw: dict, name: str, where: str) -> dict:
    listed = raw.get("stages")
    stages = [stage for stage in listed if isinstance(stage, dict)] if isinstance(listed, list) else []
    for stage in stages:
        if stage.get("name") == name:
            return stage
    names = ", ".join(quote(stage.get("name")) for stage in stages)
    raise UserError(f"{where}: no stage named {quote(name)} (stages: {clip(names)})")


def _set(raw: dict, parts: list[str], value: object, where: str) -> None:
    """Set the dotted key `parts` of `raw` to `value`; `where` names the setting in messages."""
    node = raw
    if parts[0] == "stages":
        if len(parts) < 3:
            raise UserError(f"{where}: address a stage key as stages.<stage name>.<key>")
        node, parts = _stage_by_name(raw, parts[1], where), parts[2:]
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"{where}: {quote(part)} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _model_settings(raw: dict, model: object) -> list[tuple[list[str], object, str]]:
    """The recipe's `model_settings` for `model`: (dotted key parts, value, where) in file order."""
    table = raw.get(MODEL_SETTINGS, {})
    shape = f"{MODEL_SETTINGS}: expected a mapping of model -> {{dotted.key: value}}"
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise UserError(shape)
    settings = []
    for key, value in table.get(model, {}).items() if isinstance(model, str) else ():
        where = f"{MODEL_SETTINGS}.{model}.{key}"
        parts = str(key).split(".")
        if not all(part.strip() for part in parts):
            raise UserError(f"{clip(where)}: expected a dotted key, e.g. stages.finetune.lr")
        settings.append((parts, value, where))
    return settings


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """A copy of `raw` with the `model_settings` of its model applied (the model a `model=` override
    names, if any), then each override: the user's `--set` wins. Stages are addressed by name."""
    result = copy.deepcopy(raw)
    parsed = [(parse_override(text), f"--set {quote(text)}") for text in overrides]
    model = result.get("model")
    for (parts, value), _ in parsed:
        model = value if parts == ["model"] else model
    settings = _model_settings(result, model)
    result.pop(MODEL_SETTINGS, None)
    for parts, value, where in settings:
        _set(result, parts, value, where)
    for (parts, value), where in parsed:
        _set(result, parts, value, where)
    return result
