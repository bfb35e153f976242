"""Recipes: a YAML file naming a model, a task, data settings and an ordered list of stages.

    name: sst2_int8
    model: minilm                 # Hugging Face id, local path, or the alias `minilm`
    task: sst2                    # a GLUE task, or `custom` with data.train_file/eval_file
    data: {max_seq_length: 128}
    stages:
      - {name: finetune, kind: finetune, epochs: 3}
      - {name: soft, kind: ltp_soft, lambda: 0.05, final_threshold: 0.007}

Each stage kind's config class lives beside its `run` in `compress.stages.<kind>` and is
registered in `compress.stages.KINDS`; this module holds what every stage shares.

`load_recipe` validates everything that can be checked without running: keys and types
(unknown keys refused, numbers finite), stage kinds, cross-stage rules, local paths. Each
problem is one `UserError` line naming the file and the key, user values quoted short. The
file itself is read with bounds (`compress.user_input`): UTF-8 text, at most 1 MB.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    model_validator,
)

from compress.errors import UserError
from compress.overrides import apply_overrides
from compress.paths import SIMPLE_NAME_HINT, is_simple_name
from compress.user_input import MAX_YAML_CHARS, clip, quote, safe_load

GLUE_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")


def _plain_name(value: str) -> str:
    """Recipe and stage names become folders (artifacts/<recipe>, OUT/stages/<stage>): no '.', '..' or '/'."""
    if not is_simple_name(value):
        raise ValueError(f"{quote(value)} is not a plain name ({SIMPLE_NAME_HINT}); it names a folder")
    return value


PlainName = Annotated[str, AfterValidator(_plain_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class DataConfig(_Strict):
    dir: str | None = None  # GLUE-layout folder; else $GLUE_DIR; else the Hugging Face hub
    max_train_samples: int | None = Field(None, ge=1)  # deterministic slice (seeded)
    max_eval_samples: int | None = Field(None, ge=1)
    max_seq_length: int = Field(128, ge=8, le=4096)
    train_length: tuple[int, int] | None = None  # keep train examples of [min, max] tokens
    eval_length: tuple[int, int] | None = None  # keep dev examples of [min, max] tokens
    # task: custom — plain CSV/TSV/JSON(L) files with a column mapping
    train_file: str | None = None
    eval_file: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    labels: list[str] | None = None  # class names in index order; default: sorted train labels
    regression: bool = False
    metric: Literal["accuracy", "f1", "matthews", "pearson", "spearman"] | None = None


class StageBase(_Strict):
    """What every stage config has; each kind adds `kind: Literal["<kind>"]` and its own settings."""

    name: PlainName
    reads_train: ClassVar[bool] = True  # False: the stage only evaluates (no train split needed)
    followed_only_by: ClassVar[tuple[str, ...] | None] = None  # kinds allowed after it; None: any

    def check_order(self, earlier: list[StageBase]) -> None:
        """Raise ValueError when the stages before this one do not give it what it needs."""

    def preflight(self) -> None:
        """Raise UserError when a path or library the stage names is not usable (no training)."""


class TrainingConfig(StageBase):
    """Settings every training stage shares."""

    epochs: float = Field(3.0, gt=0, le=1000)  # fractions allowed: 0.5 = half an epoch of steps
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    grad_accum_steps: int = Field(1, ge=1)  # N: a step sums N batches of batch_size / N examples
    eval_steps: int | None = Field(None, ge=1)  # also evaluate every N optimiser steps (not only per epoch)


def stage_kinds() -> dict:
    """The stage registry, `compress.stages.KINDS` (kind -> config class and run function).

    Imported here, not at the top: the stage modules import this one for `StageBase`."""
    import compress.stages

    return compress.stages.KINDS


def _known_kind(kind: object) -> bool:
    return isinstance(kind, str) and kind in stage_kinds()


def _unknown_kind(kind: object) -> str:
    return f"unknown stage kind {quote(kind)} (known: {', '.join(stage_kinds())})"


def _as_stage_config(value: Any) -> Any:
    """A stage mapping validated by its kind's config class; configs pass through."""
    if not isinstance(value, Mapping):
        return value
    kind = value.get("kind")
    if not _known_kind(kind):
        raise ValueError(_unknown_kind(kind))
    return stage_kinds()[kind].config.model_validate(value)


# SerializeAsAny: a dump keeps each stage's own fields, not only StageBase's.
Stage = Annotated[SerializeAsAny[StageBase], BeforeValidator(_as_stage_config)]


class Recipe(_Strict):
    name: PlainName
    model: str
    task: str
    seed: int = Field(42, ge=0, le=2**32 - 1)  # numpy's seed range
    data: DataConfig = DataConfig()
    # of every training stage (accelerate sets it once per process); auto: bf16 on a GPU that has it
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    stages: list[Stage] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_pipeline(self) -> Recipe:
        check_pipeline(self)
        return self

    def stage(self, name: str) -> StageBase:
        for stage in self.stages:
            if stage.name == name:
                return stage
        names = ", ".join(stage.name for stage in self.stages)
        raise UserError(f"no stage named {quote(name)} (stages: {clip(names)})")

    def named_teacher(self) -> str | None:
        """The teacher named by the first stage that names one (distill or a guided pruning stage)."""
        return next((stage.teacher for stage in self.stages if getattr(stage, "teacher", None)), None)

    def until(self, name: str | None) -> list[StageBase]:
        """The stages to run: all, or up to and including `name`."""
        if name is None:
            return list(self.stages)
        index = self.stages.index(self.stage(name))
        return list(self.stages[: index + 1])


def check_pipeline(recipe: Recipe) -> None:
    """Cross-stage rules: the generic ones here, each kind's own in its config's `check_order`."""
    if recipe.task not in GLUE_TASKS + ("custom",):
        raise ValueError(f"task: unknown task {quote(recipe.task)} (known: {', '.join(GLUE_TASKS)}, custom)")
    if recipe.task == "custom" and not recipe.data.eval_file:
        raise ValueError("data.eval_file: task 'custom' needs data.eval_file (and data.train_file)")
    duplicates = sorted(name for name, count in Counter(s.name for s in recipe.stages).items() if count > 1)
    if duplicates:
        raise ValueError(f"stages: duplicate stage name '{duplicates[0]}'")
    for position, stage in enumerate(recipe.stages):
        earlier = recipe.stages[:position]
        for before in earlier:
            _check_may_follow(before, stage)
        stage.check_order(earlier)


def _check_may_follow(before: StageBase, stage: StageBase) -> None:
    """`before.followed_only_by`: the kinds that may come after a stage of its kind."""
    allowed = before.followed_only_by
    if allowed is None or stage.kind in allowed:
        return
    if not allowed:
        raise ValueError(f"stages.{stage.name}: a {before.kind} stage must be the last stage")
    raise ValueError(
        f"stages.{stage.name}: nothing but a {' or a '.join(allowed)} can follow a {before.kind} stage"
    )


def _raw_stage_problems(raw: dict, source: str) -> None:
    """Stage kinds are checked before pydantic so the message names the `kind` key of the stage."""
    stages = raw.get("stages")
    if stages is None:
        return  # pydantic reports the missing key
    if not isinstance(stages, list):
        raise UserError(f"{source}: stages: expected a list of stages, got {type(stages).__name__}")
    for position, stage in enumerate(stages):
        if not isinstance(stage, dict):
            raise UserError(f"{source}: stages[{position}]: expected a mapping with 'name' and 'kind'")
        label = _stage_label(stage, position)
        kind = stage.get("kind")
        if not _known_kind(kind):
            raise UserError(f"{source}: stages.{label}.kind: {_unknown_kind(kind)}")


def _stage_label(stage: dict, position: int) -> str:
    """How a message names a raw stage: its name when that is a valid one, else its position."""
    name = stage.get("name")
    return name if is_simple_name(name) else f"[{position}]"


def _key(part: object) -> str:
    """A key or stage name as a part of a dotted key in a message: as is when short and printable."""
    return part if isinstance(part, str) and part.isprintable() and len(part) <= 64 else quote(part, 40)


def _describe(error: ValidationError, raw: dict) -> str:
    """First pydantic error as `dotted.key: message`, stage indices replaced by stage names."""
    first = error.errors()[0]
    parts: list[str] = []
    loc = list(first["loc"])
    if loc[:1] == ["stages"] and len(loc) > 1 and isinstance(loc[1], int):
        parts = ["stages", _stage_label(raw["stages"][loc[1]], loc[1])]
        loc = loc[2:]
    parts += [_key(p) for p in loc]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    key = ".".join(parts)
    return f"{key}: {message}" if key and not message.startswith(key) else message


def parse_recipe(raw: Any, source: str) -> Recipe:
    """Validate a recipe mapping; `source` names it in error messages."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    _raw_stage_problems(raw, source)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as error:
        raise UserError(f"{source}: {_describe(error, raw)}") from None


def _read_text(path: Path) -> str:
    """A recipe file's text: at most MAX_YAML_CHARS bytes of UTF-8, no NUL bytes."""
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}")
    try:
        with path.open("rb") as file:
            data = file.read(MAX_YAML_CHARS + 1)
    except OSError as error:
        raise UserError(f"{path}: cannot read the recipe ({error.strerror})") from None
    if len(data) > MAX_YAML_CHARS:
        raise UserError(f"{path}: larger than {MAX_YAML_CHARS} bytes; a recipe is a small YAML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}); save the recipe as UTF-8") from None
    if "\0" in text:
        raise UserError(f"{path}: a binary file (NUL byte at offset {data.index(0)}), not a YAML recipe")
    return text


def read_yaml(path: str | Path) -> dict:
    """A recipe file's mapping, read with `safe_load`'s bounds; every problem one `UserError` line."""
    path = Path(path)
    text = _read_text(path)
    try:
        raw = safe_load(text, str(path))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = clip(" ".join(str(error.problem or error.context).split()), 160)
        raise UserError(f"{path}: YAML syntax error{where}: {problem}") from None
    except yaml.reader.ReaderError as error:
        raise UserError(
            f"{path}: character #x{error.character:04x} at offset {error.position} is not allowed in YAML"
        ) from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    return raw


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override (`dotted.key=value`) and validate a recipe file."""
    return parse_recipe(apply_overrides(read_yaml(path), overrides), str(path))


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in) as YAML, saved beside every artifact."""
    return yaml.safe_dump(recipe.model_dump(mode="json", by_alias=True), sort_keys=False)
