"""Recipes: a YAML file naming a model, a task, data settings and an ordered list of stages.

    name: sst2_int8
    model: minilm                 # Hugging Face id, local path, or the alias `minilm`
    task: sst2                    # a GLUE task, or `custom` with data.train_file/eval_file
    data: {max_seq_length: 128}
    stages:
      - {name: finetune, kind: finetune, epochs: 3}
      - {name: soft, kind: ltp_soft, lambda: 0.05, final_threshold: 0.007}

`load_recipe` validates everything that can be checked without running: keys and types
(unknown keys refused, numbers finite), stage kinds, cross-stage rules, local paths. Each
problem is one `UserError` line naming the file and the key, user values quoted short. The
file itself is read with bounds (`compress.user_input`): UTF-8 text, at most 1 MB.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from compress.errors import UserError
from compress.overrides import apply_overrides
from compress.paths import SIMPLE_NAME_HINT, is_simple_name
from compress.user_input import MAX_YAML_CHARS, clip, quote, safe_load

GLUE_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")
# DESIGN §1 kinds plus the static top-k baseline; `IMPLEMENTED` grows as stages land.
KNOWN_KINDS = ("finetune", "ltp_soft", "ltp_hard", "topk", "distill", "quantize", "benchmark")
PRUNING_KINDS = ("ltp_hard", "topk")
INT8_ACTIVATIONS = ("int8_dynamic", "qat_int8")  # quantize schemes whose activations are int8


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
    name: PlainName


class TrainingConfig(StageBase):
    """Settings every training stage shares."""

    epochs: float = Field(3.0, gt=0, le=1000)  # fractions allowed: 0.5 = half an epoch of steps
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)


class FinetuneConfig(TrainingConfig):
    kind: Literal["finetune"]


class LTPSoftConfig(TrainingConfig):
    kind: Literal["ltp_soft"]
    epochs: float = Field(1.0, gt=0, le=1000)  # paper: 1 on large sets, 10 on RTE/MRPC
    batch_size: int = Field(64, ge=1)
    final_threshold: float = Field(0.01, ge=0)  # theta_final
    temperature: float = Field(1e-3, gt=0)  # T of the sigmoid mask
    lambda_: float = Field(0.1, ge=0, alias="lambda")  # weight of the kept-token (L1) term
    threshold_lr: float = Field(1e-4, gt=0)  # own AdamW group, no weight decay
    prune_from_layer: int = Field(1, ge=0)  # LTP: 1 (layer 0 keeps every token); 0 prunes after its attention
    # a FLOPs budget instead of lambda (compress.budget): GFLOPs reduction to reach, e.g. 3.0
    target_gflops_reduction: float | None = Field(None, gt=1, le=100)
    budget_lr: float = Field(0.01, gt=0)  # AdamW lr of the Lagrangian multipliers
    budget_warmup: float = Field(0.5, ge=0, le=1)  # share of the steps while the target falls to it

    @model_validator(mode="after")
    def _one_pressure(self):
        if self.target_gflops_reduction is not None and "lambda_" in self.model_fields_set:
            raise ValueError("set lambda or target_gflops_reduction, not both (the budget replaces lambda)")
        return self


class LTPHardConfig(TrainingConfig):
    kind: Literal["ltp_hard"]
    epochs: float = Field(5.0, gt=0, le=1000)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-5, gt=0)
    thresholds: str | None = None  # artifact dir with pruning.json, when no ltp_soft stage precedes


class TopKConfig(TrainingConfig):
    """Static top-k baseline: keep a fixed fraction per layer, falling linearly after `start_layer`."""

    kind: Literal["topk"]
    epochs: float = Field(5.0, gt=0, le=1000)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-5, gt=0)
    final_keep_ratio: float = Field(0.3, gt=0, le=1)
    start_layer: int = Field(3, ge=0)  # layers before it keep every token (reference: 3 of 12)


class DistillConfig(TrainingConfig):
    """Knowledge distillation: alpha * KD + (1 - alpha) * task loss (+ hidden_weight * [CLS] MSE)."""

    kind: Literal["distill"]
    teacher: str | None = None  # artifact dir or model id; default: the finetune stage's output
    temperature: float = Field(2.0, gt=0)  # softens both logit distributions; KD is scaled by T^2
    alpha: float = Field(0.5, ge=0, le=1)  # weight of the KD term
    hidden_weight: float = Field(0.0, ge=0)  # weight of the MSE between final [CLS] hidden states
    qat: bool = False  # train with int8 fake quantisation (torchao QAT prepare), for quantize qat_int8


class QuantizeConfig(StageBase):
    """Post-training int8 of the encoder's linear layers (no training), by torchao or ONNX Runtime."""

    kind: Literal["quantize"]
    scheme: Literal["int8_dynamic", "int8_weight_only", "int4_weight_only", "qat_int8"] = "int8_dynamic"
    attention: Literal["float", "int8"] = "float"  # QK^T and AV; int8 needs pruning and int8 activations
    # torchao: torch runs it; onnxruntime: the pruned model exported to ONNX, int8 by ONNX Runtime.
    # Default: onnxruntime (the fast one on CPU) where it runs the scheme, else torchao.
    engine: Literal["torchao", "onnxruntime"] | None = None
    eval_batch_size: int = Field(128, ge=1)

    @property
    def onnxruntime_can_run(self) -> bool:
        """ONNX Runtime runs int8 linear layers (int8 activations) with float attention."""
        return self.scheme in INT8_ACTIVATIONS and self.attention == "float"

    @model_validator(mode="after")
    def _default_engine(self) -> QuantizeConfig:
        if self.engine is None:
            self.engine = "onnxruntime" if self.onnxruntime_can_run else "torchao"
        return self


class BenchmarkConfig(StageBase):
    """Time the unpruned baseline, the pruned and the final model side by side (`compress.bench`)."""

    kind: Literal["benchmark"]
    batch_sizes: list[int] = Field([1, 8, 32, 128], min_length=1)
    threads: int = Field(2, ge=1)
    rounds: int = Field(5, ge=1)
    compile: bool = True  # also time every variant under torch.compile


StageConfig = Annotated[
    FinetuneConfig
    | LTPSoftConfig
    | LTPHardConfig
    | TopKConfig
    | DistillConfig
    | QuantizeConfig
    | BenchmarkConfig,
    Field(discriminator="kind"),
]
IMPLEMENTED = {"finetune", "ltp_soft", "ltp_hard", "topk", "distill", "quantize", "benchmark"}


class Recipe(_Strict):
    name: PlainName
    model: str
    task: str
    seed: int = Field(42, ge=0, le=2**32 - 1)  # numpy's seed range
    data: DataConfig = DataConfig()
    stages: list[StageConfig] = Field(min_length=1)

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
        """The teacher a distill stage names explicitly, if any."""
        return next((stage.teacher for stage in self.stages if getattr(stage, "teacher", None)), None)

    def until(self, name: str | None) -> list[StageBase]:
        """The stages to run: all, or up to and including `name`."""
        if name is None:
            return list(self.stages)
        index = self.stages.index(self.stage(name))
        return list(self.stages[: index + 1])


def check_pipeline(recipe: Recipe) -> None:
    """Cross-stage rules, in one place."""
    if recipe.task not in GLUE_TASKS + ("custom",):
        raise ValueError(f"task: unknown task {quote(recipe.task)} (known: {', '.join(GLUE_TASKS)}, custom)")
    if recipe.task == "custom" and not recipe.data.eval_file:
        raise ValueError("data.eval_file: task 'custom' needs data.eval_file (and data.train_file)")
    duplicates = sorted(name for name, count in Counter(s.name for s in recipe.stages).items() if count > 1)
    if duplicates:
        raise ValueError(f"stages: duplicate stage name '{duplicates[0]}'")
    seen: list[str] = []
    qat_trained = False
    for stage in recipe.stages:
        if "quantize" in seen and stage.kind != "benchmark":
            raise ValueError(f"stages.{stage.name}: nothing but a benchmark can follow a quantize stage")
        if "benchmark" in seen:
            raise ValueError(f"stages.{stage.name}: a benchmark stage must be the last stage")
        if stage.kind == "benchmark" and not seen:
            raise ValueError(
                f"stages.{stage.name}: a benchmark needs the stages that make its models before it "
                "(to time an existing artifact: python cli.py bench TARGET)"
            )
        if stage.kind == "distill" and "finetune" not in seen and not stage.teacher:
            raise ValueError(
                f"stages.{stage.name}: distill needs a finetune stage before it or 'teacher' "
                "(a fine-tuned model: artifact directory or hub id)"
            )
        if stage.kind == "quantize" and stage.scheme == "qat_int8" and not qat_trained:
            raise ValueError(
                f"stages.{stage.name}.scheme: qat_int8 needs a distill stage with qat: true before it"
            )
        if stage.kind == "quantize" and stage.attention == "int8" and stage.scheme not in INT8_ACTIVATIONS:
            raise ValueError(
                f"stages.{stage.name}.attention: int8 attention needs int8 activations "
                f"(scheme {' or '.join(INT8_ACTIVATIONS)}, not {stage.scheme})"
            )
        if stage.kind == "quantize" and stage.engine == "onnxruntime" and not stage.onnxruntime_can_run:
            raise ValueError(
                f"stages.{stage.name}.engine: onnxruntime runs int8 linear layers with float attention "
                f"(scheme {' or '.join(INT8_ACTIVATIONS)}, attention: float)"
            )
        qat_trained = qat_trained or getattr(stage, "qat", False)
        if stage.kind == "ltp_hard" and "ltp_soft" not in seen and not stage.thresholds:
            raise ValueError(
                f"stages.{stage.name}: ltp_hard needs an ltp_soft stage before it or 'thresholds' "
                "(an artifact directory with pruning.json)"
            )
        if stage.kind == "ltp_soft" and any(k in seen for k in PRUNING_KINDS):
            raise ValueError(f"stages.{stage.name}: ltp_soft cannot follow a hard pruning stage")
        seen.append(stage.kind)


def _raw_stage_problems(raw: dict, source: str) -> None:
    """Stage kinds are checked before pydantic so the message names the stage, not a union."""
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
        if kind not in KNOWN_KINDS:
            raise UserError(
                f"{source}: stages.{label}.kind: unknown stage kind {quote(kind)} "
                f"(known: {', '.join(KNOWN_KINDS)})"
            )
        if kind not in IMPLEMENTED:
            raise UserError(f"{source}: stages.{label}.kind: stage kind {quote(kind)} is not implemented yet")


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
        stage = raw["stages"][loc[1]]
        parts = ["stages", _stage_label(stage, loc[1])]
        loc = loc[3:] if len(loc) > 2 and loc[2] == stage.get("kind") else loc[2:]
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
