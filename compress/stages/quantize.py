"""Stage `quantize`: int8 linear layers, then a dev-set evaluation of the quantised model.

`engine: torchao` quantises the encoder's linear layers in torch; `engine: onnxruntime` exports the
pruned float model to ONNX (tokens really dropped inside the graph) and quantises it with ONNX
Runtime, whose int8 kernels run it without Python in the loop (`compress.onnx_runtime`). Either
way the input keeps pruning: thresholds and token dropping run on the quantised model. With
`attention: int8` (torchao only) the attention matmuls (QK^T, AV) run in int8 too
(`compress.int8_attention`); otherwise they stay in float. BOPs use the operand bits the matmuls
really run in (`compress.quantize.precision`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from compress.data.task_data import TaskData
from compress.errors import UserError
from compress.evaluate import model_inputs
from compress.ltp import PrunableModel
from compress.onnx_model import ONNX_FILE, OnnxModel
from compress.onnx_runtime import export_onnx, quantize_int8
from compress.quantize import check_scheme, precision, quantize_encoder
from compress.recipe import StageBase
from compress.stages.base import StageInputs, StageResult
from compress.stages.common import evaluator, load_inputs, save_stage

INT8_ACTIVATIONS = ("int8_dynamic", "qat_int8")  # schemes whose activations are int8


class QuantizeConfig(StageBase):
    """Post-training int8 of the encoder's linear layers (no training), by torchao or ONNX Runtime."""

    reads_train: ClassVar[bool] = False
    followed_only_by: ClassVar[tuple[str, ...]] = ("benchmark",)

    kind: Literal["quantize"]
    scheme: Literal["int8_dynamic", "int8_weight_only", "int4_weight_only", "qat_int8"] = "int8_dynamic"
    attention: Literal["float", "int8"] = "float"  # QK^T and AV; int8 needs pruning and int8 activations
    # torchao: torch runs it; onnxruntime: the pruned model exported to ONNX, int8 by ONNX Runtime.
    # Default: onnxruntime (the fast one on CPU) where it runs the scheme, else torchao.
    engine: Literal["torchao", "onnxruntime"] | None = None
    eval_batch_size: int = Field(128, ge=1)

    @property
    def onnxruntime_can_run(self) -> bool:
        """ONNX Runtime runs int8 linear layers (int8 activations) with float attention."""
        return self.scheme in INT8_ACTIVATIONS and self.attention == "float"

    @model_validator(mode="after")
    def _check_attention_and_engine(self) -> QuantizeConfig:
        """int8 attention needs int8 activations; the engine defaults to the fast one that runs the scheme."""
        if self.attention == "int8" and self.scheme not in INT8_ACTIVATIONS:
            raise ValueError(
                f"stages.{self.name}.attention: int8 attention needs int8 activations "
                f"(scheme {' or '.join(INT8_ACTIVATIONS)}, not {self.scheme})"
            )
        if self.engine is None:
            self.engine = "onnxruntime" if self.onnxruntime_can_run else "torchao"
        elif self.engine == "onnxruntime" and not self.onnxruntime_can_run:
            raise ValueError(
                f"stages.{self.name}.engine: onnxruntime runs int8 linear layers with float attention "
                f"(scheme {' or '.join(INT8_ACTIVATIONS)}, attention: float)"
            )
        return self

    def check_order(self, earlier: list[StageBase]) -> None:
        if self.scheme == "qat_int8" and not any(stage.kind == "distill" and stage.qat for stage in earlier):
            raise ValueError(
                f"stages.{self.name}.scheme: qat_int8 needs a distill stage with qat: true before it"
            )

    def preflight(self) -> None:
        try:
            check_scheme(self.scheme)
        except UserError as error:
            raise UserError(f"stages.{self.name}.scheme: {error}") from None


def run(config: QuantizeConfig, inputs: StageInputs) -> StageResult:
    started = time.perf_counter()
    model, tokenizer, task_data = load_inputs(inputs, need_train=False)
    if config.attention == "int8" and model.spec is None:
        raise UserError(
            f"stages.{config.name}.attention: int8 attention runs in the pruning forward, and the input "
            "model does not prune (put ltp_hard or topk before it, or use attention: float)"
        )
    bits = precision(config.scheme, config.attention == "int8")
    if config.engine == "onnxruntime":
        with tempfile.TemporaryDirectory() as scratch:  # the graph lives here until the artifact is saved
            onnx_model = quantize_for_onnxruntime(model, task_data, Path(scratch), config.scheme)
            evaluation = evaluator(task_data, config.eval_batch_size, "drop")(onnx_model)
            return save_stage(
                inputs, config, onnx_model, tokenizer, task_data, evaluation, started, precision=bits
            )
    quantize_encoder(model.hf_model, config.scheme)
    model.quantization = config.scheme
    model.int8_attention = config.attention == "int8"
    evaluation = evaluator(task_data, config.eval_batch_size, "off" if model.spec is None else "drop")(model)
    return save_stage(inputs, config, model, tokenizer, task_data, evaluation, started, precision=bits)


def quantize_for_onnxruntime(
    model: PrunableModel, task_data: TaskData, folder: Path, scheme: str
) -> OnnxModel:
    """The float model exported to ONNX (traced on a dev batch), int8 by ONNX Runtime, in a session."""
    example = next(iter(next(iter(task_data.eval_loaders(8).values()))))
    exported = export_onnx(model, folder / "fp32.onnx", model_inputs(example))
    return OnnxModel(quantize_int8(exported, folder / ONNX_FILE), model.config, model.spec, scheme)
