"""Run a recipe's stages in order and write `summary.json` (DESIGN §3).

Each stage reads the previous stage's artifact and writes its own under `OUT/stages/<name>`.
A stage whose artifact is complete and was made from the same cache key (stage config,
upstream key, recipe data/model/seed, code version) is reused, not recomputed. Local data files
and model folders enter the key by their content, not their path: the same files reached
another way (relative, absolute, a link, GLUE_DIR or --data-dir) reuse the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig

from compress.accelerator import micro_batch_size, num_processes
from compress.artifacts import read_result, write_json
from compress.data.sources import resolve_data_dir
from compress.data.task_data import load_examples, prepare_data
from compress.errors import UserError
from compress.evaluate import evaluate_saved
from compress.fingerprint import data_identity, model_identity
from compress.flops import FP16, FP32
from compress.models import load_tokenizer, resolve_model
from compress.reachability import check_reachable
from compress.recipe import Recipe, TrainingConfig, dump_recipe
from compress.stages import KINDS, StageInputs, StageResult

log = logging.getLogger(__name__)
# What a stage computes depends on the library, not on the orchestration modules around it.
ORCHESTRATION = {"pipeline.py", "sweep.py"}
OUTPUT_FILES = ("summary.json", "stages", "recipe.yaml")  # what a run leaves in OUT
PER_STAGE_ONLY = ("history", "main_metric", "trace")  # in a stage's result.json, not in the summary
# Model types whose position ids start at pad_token_id + 1 (so they take fewer tokens than positions).
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer")
CODE_VERSION_FILES = sorted(p for p in Path(__file__).parent.rglob("*.py") if p.name not in ORCHESTRATION)


@dataclass
class PlannedStage:
    config: object
    inputs: StageInputs  # inputs.cache_key: stage config + upstream key + data/model (by content)/seed + code

    @property
    def cache_key(self) -> str:
        return self.inputs.cache_key


def code_version() -> str:
    digest = hashlib.sha256()
    for path in CODE_VERSION_FILES:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def needs_train(recipe: Recipe) -> bool:
    """Whether a stage reads the train split (`reads_train`; quantize and benchmark only evaluate)."""
    return any(stage.reads_train for stage in recipe.stages)


def _shared_key(recipe: Recipe) -> dict:
    """The recipe settings in every stage's key: task, seed and data settings, with the data's and
    the model's locations replaced by what they hold."""
    shared = recipe.model_dump(mode="json", by_alias=True, include={"task", "seed", "data"})
    for location in ("dir", "train_file", "eval_file"):
        del shared["data"][location]
    shared["data"]["files"] = data_identity(recipe, needs_train(recipe))
    shared["model"] = model_identity(recipe.model)
    return shared


def preflight(recipe: Recipe, check_data: bool = False) -> None:
    """Checks that need the file system but no training: model, data files, each stage's own.

    Local data files are read and checked (encoding, columns, labels); check_data also slices and
    tokenises them (seconds), so an empty slice or an unloadable tokenizer is reported before any
    training starts. Hub data is fetched only with check_data. First of all, the model, the teachers
    and hub data must be reachable (`compress.reachability`: offline, from the cache alone).
    """
    check_reachable(recipe)
    _check_sequence_length(recipe)
    need_train = needs_train(recipe)
    if check_data:
        prepare_data(recipe, load_tokenizer(recipe.model), need_train=need_train)
    elif recipe.task == "custom" or resolve_data_dir(recipe.data.dir) is not None:
        load_examples(recipe, need_train)
    processes = num_processes()
    for stage in recipe.stages:
        stage.preflight()
        if isinstance(stage, TrainingConfig):
            micro_batch_size(stage, processes)  # the batch splits between processes and accumulation


def _check_sequence_length(recipe: Recipe) -> None:
    """data.max_seq_length within the model's position embeddings (when its config is at hand)."""
    source = resolve_model(recipe.model)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, StrictDataclassError):
        if Path(source).is_dir():
            raise UserError(f"model '{recipe.model}': no readable config.json in {source}") from None
        return  # a hub id not reachable now: loading the model reports it
    limit = getattr(config, "max_position_embeddings", None)
    if limit and config.model_type in OFFSET_POSITIONS:
        limit -= (config.pad_token_id or 0) + 1  # RoBERTa's positions start after the padding index
    if limit and recipe.data.max_seq_length > limit:
        raise UserError(
            f"data.max_seq_length: {recipe.data.max_seq_length} is more than model "
            f"'{recipe.model}' takes ({limit} tokens)"
        )


def plan(
    recipe: Recipe, out_dir: Path, until: str | None = None, stage_root: Path | None = None
) -> list[PlannedStage]:
    """Inputs and cache key of each stage to run.

    Artifacts go to OUT/stages/<name>; with `stage_root` (sweeps) to <root>/<name>-<key>, so
    runs that share a prefix of stages share its artifacts.
    """
    version = code_version()
    shared = _shared_key(recipe)
    upstream_key, model, finetuned = version, recipe.model, None
    planned, upstream = [], ()
    for stage in recipe.until(until):
        config = stage.model_dump(mode="json", by_alias=True)
        if config.get("teacher"):  # a named teacher by content too
            config["teacher"] = model_identity(config["teacher"])
        key = hashlib.sha256(json.dumps([shared, config, upstream_key], sort_keys=True).encode()).hexdigest()
        output = stage_root / f"{stage.name}-{key[:12]}" if stage_root else out_dir / "stages" / stage.name
        teacher = getattr(stage, "teacher", None) or finetuned
        planned.append(PlannedStage(stage, StageInputs(recipe, model, output, teacher, key, upstream)))
        upstream_key, model, upstream = key, str(output), (*upstream, (stage.kind, str(output)))
        if stage.kind == "finetune":
            finetuned = str(output)
    return planned


def cached_result(step: PlannedStage) -> StageResult | None:
    """The stage's stored result when its artifact was made under the same cache key, as this run's
    result: cached, 0 seconds of work (result.json keeps the seconds of the run that made it). A
    result.json that cannot be read counts as none, with a warning: the stage runs again."""
    try:
        payload = read_result(step.inputs.output_dir)
    except UserError as error:
        log.warning("stage %s: ignoring its cached artifact: %s", step.config.name, error)
        return None
    if payload is None or payload.pop("cache_key", None) != step.cache_key:
        return None
    return replace(StageResult.from_dict(payload), cached=True, seconds=0.0)


def run_or_reuse(step: PlannedStage, use_cache: bool = True) -> StageResult:
    """The stage's cached result when its artifact matches the cache key, else a fresh run; one
    log line with its score and time, and a warning if its thresholds collapsed."""
    started = time.perf_counter()
    result = cached_result(step) if use_cache else None
    if result is None:
        log.info("stage %s (%s): running", step.config.name, step.config.kind)
        result = run_stage(step)
    log.info(
        "stage %s: %s = %.4f, %.3f GFLOPs (%.0f s%s)",
        result.name,
        result.main_metric,
        result.metrics[result.main_metric],
        result.gflops,
        time.perf_counter() - started,
        ", cached" if result.cached else "",
    )
    if warning := collapse_warning(result):
        log.warning("%s", warning)
    return result


def run_stage(step: PlannedStage) -> StageResult:
    """Run one stage (its artifact carries the cache key)."""
    return KINDS[step.config.kind].run(step.config, step.inputs)


def baseline_of(recipe: Recipe, results: list[StageResult]) -> dict:
    """The unpruned fine-tuned model's metric, GFLOPs and BOPs (fp32): the finetune stage, else a
    distill stage's named teacher, else the input model with pruning off."""
    for result in results:
        if result.kind == "finetune":
            return {"value": result.metrics[result.main_metric], "gflops": result.gflops, "bops": result.bops}
    evaluation = evaluate_saved(recipe, recipe.named_teacher() or recipe.model, prune=False)
    return {"value": evaluation.main, "gflops": evaluation.cost.gflops, "bops": evaluation.cost.bops(FP32)}


def summarize(recipe: Recipe, results: list[StageResult], baseline: dict) -> dict:
    final = results[-1]
    fp16_bops = baseline["bops"] * (FP16.weight_bits * FP16.activation_bits) / (32 * 32)
    return {
        "recipe": recipe.name,
        "task": recipe.task,
        "model": recipe.model,
        "stages": [
            {key: value for key, value in r.to_dict().items() if key not in PER_STAGE_ONLY} for r in results
        ],
        "final": {
            "metric": final.main_metric,
            "value": final.metrics[final.main_metric],
            "baseline_value": baseline["value"],
            "gflops": final.gflops,
            "baseline_gflops": baseline["gflops"],
            "gflops_reduction": round(baseline["gflops"] / final.gflops, 4),
            "bops": final.bops,
            "bops_reduction_vs_fp32": round(baseline["bops"] / final.bops, 4),
            "bops_reduction_vs_fp16": round(fp16_bops / final.bops, 4),
        },
    }


def run_pipeline(recipe: Recipe, out_dir: Path, until: str | None = None, use_cache: bool = True) -> dict:
    """A checked recipe's stages (see `preflight`), run or reused in order, then OUT/summary.json:
    the library's own loop, without Prefect or MLflow (`pipelines.flow` is the tracked one)."""
    results = [run_or_reuse(step, use_cache) for step in plan(recipe, Path(out_dir), until)]
    return finish(recipe, Path(out_dir), results)


def train_alongside(recipe: Recipe, out_dir: Path, until: str | None = None, use_cache: bool = True) -> None:
    """A helper process's share of a data-parallel run (`accelerate launch`, torchrun): the training
    stages, in step with the main process, which alone writes artifacts, the summary and tracking
    runs, and alone runs the stages that do not train."""
    for step in plan(recipe, Path(out_dir), until):
        if step.config.reads_train:
            run_or_reuse(step, use_cache)


def finish(recipe: Recipe, out_dir: Path, results: list[StageResult]) -> dict:
    """The run's summary against its baseline, written to OUT/summary.json and OUT/recipe.yaml."""
    summary = summarize(recipe, results, baseline_of(recipe, results))
    write_summary(out_dir, recipe, summary)
    return summary


def collapse_warning(result: StageResult) -> str | None:
    """One line when a stage leaves only [CLS] from some layer before the last on (LTP thresholds
    that collapsed: from there on [CLS] attends to nothing but itself), else None. [CLS] alone in
    the last layer is a budget's choice, not a collapse: the layers before it have read the tokens."""
    tokens = result.tokens_per_layer
    layer = next((i for i, n in enumerate(tokens) if n < 1.5), None)
    if layer in (None, 0, len(tokens) - 1):  # nothing collapsed, single-token inputs, or the last layer
        return None
    return (
        f"stage {result.name}: only [CLS] is left from layer {layer} on ({tokens[layer]:.2f} tokens "
        f"on average against {tokens[0]:.1f} entering layer 0): the pruning thresholds collapsed; "
        "try a smaller lambda or final_threshold, or a lower threshold_lr"
    )


def write_summary(out_dir: Path, recipe: Recipe, summary: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "recipe.yaml").write_text(dump_recipe(recipe))
    scratch = out_dir / "summary.json.partial"
    write_json(scratch, summary)
    scratch.replace(out_dir / "summary.json")
