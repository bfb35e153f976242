"""What a bench compares: the unpruned baseline, the pruned and the final model of a recipe's run,
found from a recipe output folder or a stage artifact directory (`python cli.py bench TARGET`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from compress.errors import UserError
from compress.ltp import PRUNING_FILE
from compress.quantize import QUANTIZATION_FILE
from compress.recipe import Recipe, load_recipe


@dataclass
class BenchTarget:
    """The models a bench compares, and the recipe naming their task and data."""

    recipe: Recipe
    baseline: str  # the unpruned fine-tuned model: artifact dir, path or hub id
    pruned: str | None  # the last float pruned artifact
    final: str | None  # the quantised artifact


def resolve_target(target: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> BenchTarget:
    """What to compare for TARGET: a recipe output folder (summary.json) or a stage artifact directory.

    Recipe folder: its stages' artifacts. Stage directory: the stages of its recipe.yaml up to it,
    found as sibling directories. Baseline = the finetune stage's artifact, else a distill stage's
    named teacher, else the recipe's `model` (as in summary.json); pruned = the last float artifact
    with pruning.json, else the recipe's `model` when it has one; final = the last quantised artifact.
    """
    path = Path(target)
    if (path / "summary.json").is_file():
        recipe = load_recipe(path / "recipe.yaml", overrides)
        stages = json.loads((path / "summary.json").read_text())["stages"]
        chain = [(stage["kind"], Path(stage["artifact"])) for stage in stages]
    elif (path / "recipe.yaml").is_file() and (path / "config.json").is_file():
        recipe = load_recipe(path / "recipe.yaml", overrides)
        names = [stage.name for stage in recipe.stages]
        before = recipe.stages[: names.index(path.name)] if path.name in names else []
        chain = [(stage.kind, path.parent / stage.name) for stage in before] + [(None, path)]
    else:
        raise UserError(
            f"bench target {str(target)!r}: not a recipe output folder (summary.json) "
            "nor a stage artifact (recipe.yaml + config.json)"
        )
    return select_models(recipe, chain, f"bench target {str(target)!r}")


def select_models(recipe: Recipe, chain: list[tuple[str | None, Path]], source: str) -> BenchTarget:
    """Baseline, pruned and final model among a recipe's stage artifacts (kind, folder), in order."""
    chain = [(kind, folder) for kind, folder in chain if (folder / "config.json").is_file()]
    quantized = [folder for _, folder in chain if (folder / QUANTIZATION_FILE).is_file()]
    pruned = [f for _, f in chain if (f / PRUNING_FILE).is_file() and f not in quantized]
    if not pruned and (Path(recipe.model) / PRUNING_FILE).is_file():
        pruned = [Path(recipe.model)]
    if not pruned and not quantized:
        raise UserError(f"{source}: no pruned or quantised model to compare")
    fallback = recipe.named_teacher() or recipe.model
    baseline = next((str(folder) for kind, folder in chain if kind == "finetune"), fallback)
    return BenchTarget(
        recipe,
        baseline,
        str(pruned[-1]) if pruned else None,
        str(quantized[-1]) if quantized else None,
    )
