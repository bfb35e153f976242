"""The stage registry: kind -> its config class and `run(config, inputs) -> StageResult`.

Explicit, nothing discovered: a stage kind is one module (its `<Kind>Config` with a
`kind: Literal["<kind>"]` field, and its `run`) and one `register` line below. Recipes validate
each stage with its kind's config class; the pipeline runs it with its kind's function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args, get_origin

from compress.recipe import StageBase
from compress.stages import benchmark, distill, finetune, ltp_hard, ltp_soft, quantize, topk
from compress.stages.base import StageInputs, StageResult


@dataclass(frozen=True)
class StageKind:
    config: type[StageBase]
    run: Callable[[StageBase, StageInputs], StageResult]


KINDS: dict[str, StageKind] = {}


def register(config: type[StageBase], run: Callable[[StageBase, StageInputs], StageResult]) -> None:
    """Add a stage kind, named by its config's `kind: Literal["<kind>"]` field."""
    field = config.model_fields.get("kind")
    names = get_args(field.annotation) if field and get_origin(field.annotation) is Literal else ()
    if len(names) != 1:
        raise ValueError(f"{config.__name__} needs a field kind: Literal['<kind>'] naming one kind")
    if names[0] in KINDS:
        raise ValueError(f"stage kind {names[0]!r} is already registered ({KINDS[names[0]].config.__name__})")
    KINDS[names[0]] = StageKind(config, run)


# In this order in messages ("known: ...").
register(finetune.FinetuneConfig, finetune.run)
register(ltp_soft.LTPSoftConfig, ltp_soft.run)
register(ltp_hard.LTPHardConfig, ltp_hard.run)
register(topk.TopKConfig, topk.run)
register(distill.DistillConfig, distill.run)
register(quantize.QuantizeConfig, quantize.run)
register(benchmark.BenchmarkConfig, benchmark.run)

__all__ = ["KINDS", "StageInputs", "StageKind", "StageResult", "register"]
