"""Stage `ltp_hard`: thresholds frozen and binarised; fine-tune with pruned tokens really dropped.

No L1 term. The best dev epoch is kept. The artifact carries the thresholds (pruning.json),
so every later stage and `cli.py pull` get a model that prunes.
"""

from __future__ import annotations

import time
from pathlib import Path

from compress.errors import UserError
from compress.ltp import PrunableModel, PruningSpec
from compress.recipe import LTPHardConfig
from compress.stages.base import StageInputs, StageResult
from compress.stages.common import load_inputs, train_and_save


def run(config: LTPHardConfig, inputs: StageInputs) -> StageResult:
    started = time.perf_counter()
    model, tokenizer, task_data = load_inputs(inputs)
    if config.thresholds:
        spec = PruningSpec.load(Path(config.thresholds), model.num_layers)
        if spec is None:
            raise UserError(f"stages.{config.name}.thresholds: no pruning.json in {config.thresholds}")
        model = PrunableModel(model.hf_model, spec)  # the offsets come from the spec
    if model.spec is None or model.spec.method != "ltp":
        raise UserError(
            f"stages.{config.name}: the input model has no learned thresholds (run ltp_soft first)"
        )
    model.threshold_offsets.requires_grad_(False)
    return train_and_save(config, inputs, model, tokenizer, task_data, started)
