"""Sweeps: a recipe once per value of one key, as a Prefect flow on Dask, and the metric against GFLOPs.

`sweep_flow` first runs, once and in order, the stages every point shares (the same cache key in
every point: those before the swept one); then each value runs the rest of its recipe as one
Prefect task on prefect-dask's `DaskTaskRunner`: a local Dask cluster of `workers` processes (the
cores split between them) or an existing cluster at `address`. Stage artifacts live under
OUT/stages/<name>-<key>, so points share them; each value gets OUT/<key>=<value>/summary.json,
and the sweep OUT/sweep_<key>.json and OUT/sweep_<key>.png (sweeps of several keys can share OUT).

MLflow: one parent run per sweep (experiment `<recipe>-sweep`) with the shared stages as nested
runs and one child run per point (the point's params, its final metrics, tokens per layer, and its
stages nested under it); sweep_<key>.json and the plot are the parent's artifacts.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect_dask import DaskTaskRunner

from compress.artifacts import write_json
from compress.errors import UserError
from compress.overrides import apply_overrides
from compress.paths import check_simple_name
from compress.pipeline import PlannedStage, finish, plan, preflight
from compress.recipe import Recipe, parse_recipe, read_yaml
from compress.user_input import quote
from pipelines import tracking
from pipelines.flow import run_stage, run_stage_task
from pipelines.servers import ensure_prefect_api

log = logging.getLogger(__name__)


def sweep_recipes(recipe_path: Path, key: str, values: list[str], overrides: list[str]) -> list[Recipe]:
    """The recipe of each point, resolved whole (a swept `model` picks its own model_settings)."""
    if not values:
        raise UserError("--values: no values to sweep (give them comma-separated, e.g. 0.01,0.02)")
    raw = read_yaml(recipe_path)
    return [parse_recipe(apply_overrides(raw, [*overrides, f"{key}={v}"]), str(recipe_path)) for v in values]


def run_sweep(
    recipes: list[Recipe],
    key: str,
    values: list[str],
    out_dir: Path,
    use_cache: bool = True,
    workers: int = 1,
    address: str | None = None,
) -> dict:
    """`sweep_flow` over the points' recipes (`sweep_recipes`) on a local Dask cluster of `workers`
    processes, or on the cluster at `address`. Each recipe is checked here, once, before any
    cluster starts."""
    for recipe in recipes:
        preflight(recipe)
    tracking.check_tracking()
    if address:
        _check_scheduler(address)
    api_url = ensure_prefect_api()
    threads = max(1, (os.cpu_count() or 1) // workers)
    if address:
        runner = DaskTaskRunner(address=address)
    else:
        cluster = {
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
        runner = DaskTaskRunner(cluster_kwargs=cluster)
    # Dask workers are other processes: they report to this Prefect API (a server), given by env
    with _environment(PREFECT_API_URL=os.environ.get("PREFECT_API_URL") or api_url):
        return sweep_flow.with_options(task_runner=runner)(
            recipes, key, values, str(out_dir), use_cache, None if address else threads
        )


def _check_scheduler(address: str) -> None:
    """A Dask scheduler answers at `address`, or one line (before any stage runs)."""
    from distributed import Client

    try:
        Client(address, timeout=10).close()
    except (OSError, TimeoutError, ValueError) as error:
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise UserError(f"--address {quote(address)}: no Dask scheduler answers there ({reason})") from None


@contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """Environment variables set for the block (local workers inherit them), then restored."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@flow(name="sweep")
def sweep_flow(
    recipes: list[Recipe], key: str, values: list[str], out_dir: str, use_cache: bool, threads: int | None
) -> dict:
    """The shared stages once, then one task per point; writes and returns OUT/sweep_<key>.json."""
    out = Path(out_dir)
    run_dirs = [out / check_simple_name(f"{key.split('.')[-1]}={value}", "--values") for value in values]
    with tracking.sweep_run(recipes[0], key, values) as parent:
        parent_id = parent.info.run_id
        shared = shared_steps(recipes, run_dirs, out / "stages")
        for step in shared:
            run_stage_task(step, use_cache, parent_id)
        settings = PointSettings(str(out / "stages"), use_cache, [step.cache_key for step in shared], threads)
        futures = [
            run_point_task.submit(recipe, key, value, str(run_dir), settings, parent_id)
            for recipe, value, run_dir in zip(recipes, values, run_dirs, strict=True)
        ]
        rows = [sweep_row(value, future.result()) for value, future in zip(values, futures, strict=True)]
        for row in rows:
            log.info(
                "%s=%s: %s %.4f at %.3f GFLOPs (%.2fx fewer)",
                key, row["value"], row["metric"], row["score"], row["gflops"], row["gflops_reduction"],
            )  # fmt: skip
        sweep = {
            "recipe": recipes[0].name,
            "key": key,
            "rows": _merge_earlier(out, recipes[0].name, key, rows),
        }
        out.mkdir(parents=True, exist_ok=True)
        write_json(sweep_file(out, key, ".json"), sweep)
        plot_sweep(sweep, sweep_file(out, key, ".png"))
        client = MlflowClient()
        for suffix in (".json", ".png"):
            client.log_artifact(parent_id, str(sweep_file(out, key, suffix)))
    return sweep


def shared_steps(recipes: list[Recipe], run_dirs: list[Path], stage_root: Path) -> list[PlannedStage]:
    """The planned stages every point has in common (same cache key, in order from the first)."""
    plans = [
        plan(recipe, run_dir, None, stage_root) for recipe, run_dir in zip(recipes, run_dirs, strict=True)
    ]
    shared = []
    for steps in zip(*plans, strict=False):
        if len({step.cache_key for step in steps}) > 1:
            break
        shared.append(steps[0])
    return shared


@dataclass(frozen=True)
class PointSettings:
    """What every point of a sweep shares: where stage artifacts live, whether to reuse them (the
    shared stages always: the flow has just made them), and torch threads (None: the worker's)."""

    stage_root: str
    use_cache: bool
    shared_keys: list[str]
    threads: int | None


@task(name="sweep_point", retries=0, cache_policy=NO_CACHE, task_run_name="{key}={value}")
def run_point_task(
    recipe: Recipe, key: str, value: str, run_dir: str, settings: PointSettings, parent_run_id: str
) -> dict:
    """One point's pipeline as a child run of the sweep; its shared stages come from the cache."""
    if settings.threads:  # a local cluster's share of the cores; a remote worker keeps its own
        import torch

        torch.set_num_threads(settings.threads)
    tracking.use_tracking_store()
    with tracking.point_run(parent_run_id, recipe, key, value) as run:
        steps = plan(recipe, Path(run_dir), None, Path(settings.stage_root))
        results = [
            run_stage(step, settings.use_cache or step.cache_key in settings.shared_keys, run.info.run_id)
            for step in steps
        ]
        summary = finish(recipe, Path(run_dir), results)
        tracking.log_point(run.info.run_id, sweep_row(value, summary))
    return summary


def sweep_row(value: str, summary: dict) -> dict:
    """One point of the sweep: the swept value and its final model against the baseline."""
    final = summary["final"]
    return {
        "value": value,
        "metric": final["metric"],
        "score": final["value"],
        "gflops": final["gflops"],
        "gflops_reduction": final["gflops_reduction"],
        "bops_reduction_vs_fp32": final["bops_reduction_vs_fp32"],
        "bops_reduction_vs_fp16": final["bops_reduction_vs_fp16"],
        "baseline_score": final["baseline_value"],
        "baseline_gflops": final["baseline_gflops"],
        "tokens_per_layer": summary["stages"][-1]["tokens_per_layer"],
    }


def sweep_file(out_dir: Path, key: str, suffix: str) -> Path:
    return out_dir / f"sweep_{key}{suffix}"


def _merge_earlier(out_dir: Path, recipe: str, key: str, rows: list[dict]) -> list[dict]:
    """Rows of an earlier sweep of the same recipe and key in OUT, extended (and updated) by `rows`.

    So a sweep can be widened later (more values) without re-running the values it already has.
    """
    path = sweep_file(out_dir, key, ".json")
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    if earlier.get("recipe") != recipe or earlier.get("key") != key:
        return rows
    new_values = {row["value"] for row in rows}
    return [row for row in earlier["rows"] if row["value"] not in new_values] + rows


def plot_sweep(sweep: dict, path: Path) -> None:
    """Metric vs GFLOPs, one point per value, the unpruned baseline as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(sweep["rows"], key=lambda r: r["gflops"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["gflops"] for r in rows], [r["score"] for r in rows], "o-", label=sweep["key"])
    for row in rows:
        ax.annotate(
            str(row["value"]), (row["gflops"], row["score"]), textcoords="offset points", xytext=(4, 4)
        )
    ax.plot([rows[0]["baseline_gflops"]], [rows[0]["baseline_score"]], "*", markersize=12, label="unpruned")
    ax.set_xlabel("GFLOPs per example (dev set)")
    ax.set_ylabel(rows[0]["metric"])
    ax.set_title(f"{sweep['recipe']}: {sweep['key']} sweep")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
