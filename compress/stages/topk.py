"""Stage `topk`: the static top-k baseline LTP is compared with.

Each layer keeps a fixed fraction of the input length (its most important tokens by the
same attention score), 1.0 before `start_layer`, then falling linearly to
`final_keep_ratio` at the last layer. With `target_gflops_reduction` instead, each layer from
`start_layer` on keeps the same share of the tokens the layer before it kept, that share chosen
so that the dev inputs (labels unused, as for LTP's budget) meet the budget. The model is then
fine-tuned with tokens dropped (guided by the teacher with `distill_alpha`).
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from pydantic import Field, model_validator

from compress.ltp import PruningSpec, linear_keep_ratios
from compress.stages.base import StageInputs, StageResult
from compress.stages.common import geometric_budget_ratios, load_inputs, train_and_save
from compress.stages.teacher import TeacherGuidedConfig, stage_teacher

log = logging.getLogger(__name__)


class TopKConfig(TeacherGuidedConfig):
    """Static top-k baseline: keep a fixed fraction per layer, falling linearly after `start_layer`
    (or geometrically, to a FLOPs budget)."""

    kind: Literal["topk"]
    epochs: float = Field(5.0, gt=0, le=1000)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-5, gt=0)
    final_keep_ratio: float = Field(0.3, gt=0, le=1)
    start_layer: int = Field(3, ge=0)  # layers before it keep every token (reference: 3 of 12)
    target_gflops_reduction: float | None = Field(None, gt=1, le=100)  # instead of final_keep_ratio

    @model_validator(mode="after")
    def _one_schedule(self):
        if self.target_gflops_reduction is not None and "final_keep_ratio" in self.model_fields_set:
            raise ValueError("set final_keep_ratio or target_gflops_reduction, not both")
        return self


def run(config: TopKConfig, inputs: StageInputs) -> StageResult:
    started = time.perf_counter()
    model, tokenizer, task_data = load_inputs(inputs)
    if config.target_gflops_reduction:
        ratios = geometric_budget_ratios(config, "start_layer", model.config, task_data)
    else:
        ratios = linear_keep_ratios(model.num_layers, config.final_keep_ratio, config.start_layer)
    model.spec = PruningSpec(method="topk", max_length=inputs.recipe.data.max_seq_length, keep_ratios=ratios)
    teacher = stage_teacher(config, inputs, task_data.task)
    return train_and_save(config, inputs, model, tokenizer, task_data, started, teacher=teacher)
