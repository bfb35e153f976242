"""Stage `quantize`: torchao quantisation of the encoder's linear layers, then a dev-set evaluation.

The input keeps pruning: thresholds and token dropping run on the quantised model. BOPs use
the scheme's operand bits (`compress.quantize.PRECISION`); the attention matmuls stay in float.
"""

from __future__ import annotations

import time

from compress.quantize import PRECISION, quantize_encoder
from compress.recipe import QuantizeConfig
from compress.stages.base import StageInputs, StageResult
from compress.stages.common import evaluator, load_inputs, save_stage


def run(config: QuantizeConfig, inputs: StageInputs) -> StageResult:
    started = time.perf_counter()
    model, tokenizer, task_data = load_inputs(inputs, need_train=False)
    quantize_encoder(model.hf_model, config.scheme)
    model.quantization = config.scheme
    evaluation = evaluator(task_data, config.eval_batch_size, "off" if model.spec is None else "drop")(model)
    precision = PRECISION[config.scheme]
    return save_stage(inputs, config, model, tokenizer, task_data, evaluation, started, precision=precision)
