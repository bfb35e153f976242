"""Stage `topk`: the static top-k baseline LTP is compared with.

Each layer keeps a fixed fraction of the input length (its most important tokens by the
same attention score), 1.0 before `start_layer`, then falling linearly to
`final_keep_ratio` at the last layer; the model is fine-tuned with tokens dropped.
"""

from __future__ import annotations

import time

from compress.ltp import PruningSpec, linear_keep_ratios
from compress.recipe import TopKConfig
from compress.stages.base import StageInputs, StageResult
from compress.stages.common import load_inputs, train_and_save


def run(config: TopKConfig, inputs: StageInputs) -> StageResult:
    started = time.perf_counter()
    model, tokenizer, task_data = load_inputs(inputs)
    ratios = linear_keep_ratios(model.num_layers, config.final_keep_ratio, config.start_layer)
    model.spec = PruningSpec(method="topk", max_length=inputs.recipe.data.max_seq_length, keep_ratios=ratios)
    model.threshold_offsets.requires_grad_(False)
    return train_and_save(config, inputs, model, tokenizer, task_data, started)
