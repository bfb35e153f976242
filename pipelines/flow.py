"""The Prefect flow: a recipe's stages as Prefect tasks, each a nested MLflow run.

The flow body is the plan it runs: `for step in plan(recipe): run_stage_task(step)`, then the
summary and the registration. The artifact cache lookup happens inside the task, so a reused
stage still shows as a task and gets its nested run, tagged cached=true. Tasks take plans
(paths and configs), never models. Without PREFECT_API_URL, Prefect starts its ephemeral API;
with it, runs are recorded on that server.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from compress.errors import UserError
from compress.paths import check_output_dir
from compress.pipeline import OUTPUT_FILES, PlannedStage, finish, plan, preflight, run_or_reuse, write_summary
from compress.recipe import Recipe, load_recipe
from compress.stages import StageResult
from pipelines import tracking
from pipelines.registry import DEFAULT_ALIAS, register_model
from pipelines.servers import ensure_prefect_api

# Prefect's API client logs every HTTP request at INFO through httpx; the CLI logs at INFO.
if logging.getLogger("httpx").level == logging.NOTSET:
    logging.getLogger("httpx").setLevel(logging.WARNING)


class _UserErrorsInOneLine(logging.Filter):
    """Prefect logs a task's or flow's exception with its traceback; a user mistake needs only
    its message (the CLI prints it as one line and exits 2)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(_UserErrorsInOneLine())


def check(
    recipe_path: str | Path,
    overrides: list[str],
    until: str | None,
    check_data: bool = False,
    need_prefect_server: bool = False,
    out_dir: str | Path | None = None,
) -> Recipe:
    """What can fail before training: recipe, --until, output folder, model, data (files; with
    check_data the slices too), tracking store, Prefect API (a server if need_prefect_server; see
    `servers.ensure_prefect_api`)."""
    recipe = load_recipe(recipe_path, overrides)
    if until is not None:
        recipe.stage(until)
    check_output_dir(output_dir(recipe, out_dir), ours=OUTPUT_FILES)
    preflight(recipe, check_data)
    tracking.check_tracking()
    ensure_prefect_api(need_prefect_server)
    return recipe


def output_dir(recipe: Recipe, out_dir: str | Path | None) -> Path:
    """--out, else artifacts/<recipe name>."""
    return Path(out_dir) if out_dir else Path("artifacts") / recipe.name


# Prefect's caching is off: compress.pipeline.cached_result is the cache (keyed on config,
# upstream keys and code version), and hashing task inputs would buy nothing.
def run_stage(step: PlannedStage, use_cache: bool = True, parent_run_id: str | None = None) -> StageResult:
    """Reuse the stage's artifact when its cache key matches, else run the stage; log a nested run."""
    with tracking.stage_run(parent_run_id, step) as run:
        result = run_or_reuse(step, use_cache)
        if run is not None:
            tracking.log_stage(run.info.run_id, result)
    return result


run_stage_task = task(name="run_stage", retries=0, cache_policy=NO_CACHE, task_run_name="{step.config.name}")(
    run_stage
)


@task(name="register_model", retries=0, cache_policy=NO_CACHE)
def register_task(recipe: Recipe, step: PlannedStage, alias: str = DEFAULT_ALIAS) -> str:
    """The planned stage's artifact as registered model recipe.name, alias `alias` (logged in the
    active run), with the plan's cache key."""
    return register_model(recipe, step.inputs.output_dir, step.cache_key, alias)


@flow(name="compress", validate_parameters=False)  # validating would check `checked` a second time
def compress_flow(
    recipe_path: str,
    overrides: list[str] | None = None,
    out_dir: str | None = None,
    until: str | None = None,
    use_cache: bool = True,
    checked: Recipe | None = None,
) -> dict:
    """Run (or reuse) a recipe's stages, register the final model, write OUT/summary.json.

    `checked`: the recipe as the caller (the CLI) already loaded and checked it, so it is read
    once; without it (a deployment's run) the flow loads and checks `recipe_path` itself. The
    final model is registered only when the whole recipe ran (not with --until an earlier
    stage): a teacher is not a champion. summary.json gets an "mlflow" block.
    """
    recipe = checked or check(recipe_path, overrides or [], until, out_dir=out_dir)
    out = output_dir(recipe, out_dir)
    steps = plan(recipe, out, until)
    with tracking.pipeline_run(recipe) as parent:
        run_id = parent.info.run_id
        results = [run_stage_task(step, use_cache, run_id) for step in steps]
        summary = finish(recipe, out, results)
        model_uri = None
        if until is None or until == recipe.stages[-1].name:
            model = [step for step in steps if step.config.kind != "benchmark"][-1]
            model_uri = register_task(recipe, model)
        summary["mlflow"] = {
            "tracking_uri": tracking.tracking_uri(),
            "run_id": run_id,
            "model_uri": model_uri,
        }
        write_summary(out, recipe, summary)
        tracking.log_summary(run_id, summary, out / "summary.json")
    return summary
