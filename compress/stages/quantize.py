"""Stage `quantize`: torchao quantisation of the encoder's linear layers, then a dev-set evaluation.

The input keeps pruning: thresholds and token dropping run on the quantised model. With
`attention: int8` the attention matmuls (QK^T, AV) run in int8 too (`compress.int8_attention`);
otherwise they stay in float. BOPs use the operand bits the matmuls really run in
(`compress.quantize.precision`).
"""

from __future__ import annotations

import time

from compress.errors import UserError
from compress.quantize import precision, quantize_encoder
from compress.recipe import QuantizeConfig
from compress.stages.base import StageInputs, StageResult
from compress.stages.common import evaluator, load_inputs, save_stage


def run(config: QuantizeConfig, inputs: StageInputs) -> StageResult:
    started = time.perf_counter()
    model, tokenizer, task_data = load_inputs(inputs, need_train=False)
    if config.attention == "int8" and model.spec is None:
        raise UserError(
            f"stages.{config.name}.attention: int8 attention runs in the pruning forward, and the input "
            "model does not prune (put ltp_hard or topk before it, or use attention: float)"
        )
    quantize_encoder(model.hf_model, config.scheme)
    model.quantization = config.scheme
    model.int8_attention = config.attention == "int8"
    evaluation = evaluator(task_data, config.eval_batch_size, "off" if model.spec is None else "drop")(model)
    bits = precision(config.scheme, model.int8_attention)
    return save_stage(inputs, config, model, tokenizer, task_data, evaluation, started, precision=bits)
