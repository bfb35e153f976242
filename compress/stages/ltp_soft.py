"""Stage `ltp_soft`: learn one threshold per layer with a sigmoid mask and an L1 term on kept tokens.

Loss = task loss + lambda * sum over layers of the mean soft mask. The thresholds have their
own AdamW group (no weight decay). Evaluation prunes for real; the last checkpoint is kept
(the best-scoring one would be the one that prunes least).
"""

from __future__ import annotations

import time

from compress.ltp import PruningSpec
from compress.recipe import LTPSoftConfig
from compress.stages.base import StageInputs, StageResult
from compress.stages.common import load_inputs, train_and_save, weight_groups


def run(config: LTPSoftConfig, inputs: StageInputs) -> StageResult:
    started = time.perf_counter()
    model, tokenizer, task_data = load_inputs(inputs)
    model.spec = PruningSpec(
        method="ltp",
        max_length=inputs.recipe.data.max_seq_length,
        final_threshold=config.final_threshold,
        temperature=config.temperature,
    )
    model.threshold_offsets.data.zero_()
    groups = weight_groups(model, config.weight_decay)
    groups.append({"params": [model.threshold_offsets], "lr": config.threshold_lr, "weight_decay": 0.0})
    return train_and_save(
        config,
        inputs,
        model,
        tokenizer,
        task_data,
        started,
        train_mode="soft",
        groups=groups,
        kept_weight=config.lambda_,
        keep="last",
    )
