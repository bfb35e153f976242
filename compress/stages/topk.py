"""Stage `topk`: the static top-k baseline LTP is compared with.

Each layer keeps a fixed fraction of the input length (its most important tokens by the
same attention score), 1.0 before `start_layer`, then falling linearly to
`final_keep_ratio` at the last layer; the model is fine-tuned with tokens dropped (guided by
the teacher with `distill_alpha`).
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from compress.ltp import PruningSpec, linear_keep_ratios
from compress.stages.base import StageInputs, StageResult
from compress.stages.common import load_inputs, train_and_save
from compress.stages.teacher import TeacherGuidedConfig, stage_teacher


class TopKConfig(TeacherGuidedConfig):
    """Static top-k baseline: keep a fixed fraction per layer, falling linearly after `start_layer`."""

    kind: Literal["topk"]
    epochs: float = Field(5.0, gt=0, le=1000)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-5, gt=0)
    final_keep_ratio: float = Field(0.3, gt=0, le=1)
    start_layer: int = Field(3, ge=0)  # layers before it keep every token (reference: 3 of 12)


def run(config: TopKConfig, inputs: StageInputs) -> StageResult:
    started = time.perf_counter()
    model, tokenizer, task_data = load_inputs(inputs)
    ratios = linear_keep_ratios(model.num_layers, config.final_keep_ratio, config.start_layer)
    model.spec = PruningSpec(method="topk", max_length=inputs.recipe.data.max_seq_length, keep_ratios=ratios)
    teacher = stage_teacher(config, inputs, task_data.task)
    return train_and_save(config, inputs, model, tokenizer, task_data, started, teacher=teacher)
