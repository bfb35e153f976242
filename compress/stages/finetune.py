"""Stage `finetune`: fine-tune the teacher on the task; the best dev epoch is kept."""

from __future__ import annotations

import time
from typing import Literal

from compress.recipe import TrainingConfig
from compress.stages.base import StageInputs, StageResult
from compress.stages.common import load_inputs, train_and_save


class FinetuneConfig(TrainingConfig):
    kind: Literal["finetune"]


def run(config: FinetuneConfig, inputs: StageInputs) -> StageResult:
    started = time.perf_counter()
    model, tokenizer, task_data = load_inputs(inputs)
    mode = "off" if model.spec is None else "drop"  # an unpruned model runs its own (SDPA) forward
    return train_and_save(config, inputs, model, tokenizer, task_data, started, train_mode=mode)
