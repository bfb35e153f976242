"""Sweeps: run a recipe once per value of one key and plot the metric against GFLOPs.

Stages before the swept one have the same cache key in every run, so they run once and are
shared (artifacts under OUT/stages/<name>-<key>); each value gets OUT/<key>=<value>/summary.json,
and the sweep OUT/sweep_<key>.json and OUT/sweep_<key>.png (so sweeps of several keys can share OUT).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from compress.artifacts import write_json
from compress.overrides import apply_overrides
from compress.paths import check_simple_name
from compress.pipeline import run_pipeline
from compress.recipe import Recipe, parse_recipe, read_yaml

log = logging.getLogger(__name__)


def sweep_recipes(recipe_path: Path, key: str, values: list[str], overrides: list[str]) -> list[Recipe]:
    """The recipe of each point, resolved whole (a swept `model` picks its own model_settings)."""
    raw = read_yaml(recipe_path)
    return [parse_recipe(apply_overrides(raw, [*overrides, f"{key}={v}"]), str(recipe_path)) for v in values]


def run_sweep(
    recipe_path: Path,
    key: str,
    values: list[str],
    overrides: list[str],
    out_dir: Path,
    use_cache: bool = True,
) -> dict:
    """One pipeline per value; returns and writes OUT/sweep_<key>.json, and plots OUT/sweep_<key>.png."""
    recipes = sweep_recipes(recipe_path, key, values, overrides)
    run_dirs = [out_dir / check_simple_name(f"{key.split('.')[-1]}={value}", "--values") for value in values]
    rows = []
    for value, recipe, run_dir in zip(values, recipes, run_dirs, strict=True):
        summary = run_pipeline(recipe, run_dir, use_cache=use_cache, stage_root=out_dir / "stages")
        final = summary["final"]
        rows.append(
            {
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
        )
        log.info(
            "%s=%s: %s %.4f at %.3f GFLOPs (%.2fx fewer)",
            key,
            value,
            final["metric"],
            final["value"],
            final["gflops"],
            final["gflops_reduction"],
        )
    sweep = {
        "recipe": recipes[0].name,
        "key": key,
        "rows": _merge_earlier(out_dir, recipes[0].name, key, rows),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(sweep_file(out_dir, key, ".json"), sweep)
    plot_sweep(sweep, sweep_file(out_dir, key, ".png"))
    return sweep


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
