"""Stage `distill`: the student (normally the pruned `ltp_hard` output) learns from the teacher.

Loss = alpha * KD + (1 - alpha) * task loss       (KD: compress.stages.teacher)
     + hidden_weight * MSE(student [CLS] final hidden state, teacher's)

The student keeps pruning (tokens dropped, thresholds frozen). With `qat: true` the encoder's
linear layers train under torchao's int8 fake quantisation (QAT prepare); the artifact keeps
the trained float weights, and a later `quantize` stage with scheme `qat_int8` puts them on
real int8 kernels. The best dev epoch is kept; a model pruned to a FLOPs budget is shifted back
onto it after training.
"""

from __future__ import annotations

import time
from typing import Literal

import torch.nn.functional as F
from pydantic import Field

from compress.errors import UserError
from compress.evaluate import model_inputs
from compress.ltp import PrunableModel
from compress.quantize import prepare_qat, remove_fake_quantizers
from compress.recipe import StageBase, TrainingConfig
from compress.stages.base import StageInputs, StageResult
from compress.stages.common import keep_budget, load_inputs, save_stage, task_loss, train_model
from compress.stages.teacher import Teacher, check_teacher_exists, check_teacher_order


class DistillConfig(TrainingConfig):
    """Knowledge distillation: alpha * KD + (1 - alpha) * task loss (+ hidden_weight * [CLS] MSE)."""

    kind: Literal["distill"]
    teacher: str | None = None  # artifact dir or model id; default: the finetune stage's output
    temperature: float = Field(2.0, gt=0)  # softens both logit distributions; KD is scaled by T^2
    alpha: float = Field(0.5, ge=0, le=1)  # weight of the KD term
    hidden_weight: float = Field(0.0, ge=0)  # weight of the MSE between final [CLS] hidden states
    qat: bool = False  # train with int8 fake quantisation (torchao QAT prepare), for quantize qat_int8

    def check_order(self, earlier: list[StageBase]) -> None:
        check_teacher_order(self, earlier, "distill")

    def preflight(self) -> None:
        check_teacher_exists(self)


def distillation_loss(teacher: Teacher, hidden_weight: float, regression: bool):
    """The stage's loss function for the shared training loop (teacher frozen, in eval mode)."""

    def loss_fn(student: PrunableModel, batch: dict):
        target = teacher.outputs(batch)
        out = student(**model_inputs(batch), mode="drop")
        supervised = task_loss(out.logits, batch["labels"], regression)
        loss, logs = teacher.blend(out.logits, target.logits, supervised)
        if hidden_weight:
            hidden = F.mse_loss(out.cls_hidden, target.cls_hidden)
            loss = loss + hidden_weight * hidden
            logs["hidden"] = float(hidden.detach())
        return loss, logs

    return loss_fn


def run(config: DistillConfig, inputs: StageInputs) -> StageResult:
    started = time.perf_counter()
    student, tokenizer, task_data = load_inputs(inputs)
    task = task_data.task
    teacher = Teacher(inputs.teacher, task.num_labels, task.is_regression, config.temperature, config.alpha)
    if config.hidden_weight and teacher.model.config.hidden_size != student.config.hidden_size:
        raise UserError(
            f"stages.{config.name}.hidden_weight: teacher hidden size {teacher.model.config.hidden_size} "
            f"differs from the student's {student.config.hidden_size}; set hidden_weight: 0"
        )
    if config.qat:
        prepare_qat(student.hf_model)
    loss_fn = distillation_loss(teacher, config.hidden_weight, task.is_regression)
    trained = train_model(
        config, student, task_data, loss_fn=loss_fn, mixed_precision=inputs.recipe.mixed_precision
    )
    evaluation = trained.best  # on the budget when there is one (train_model evaluates there)
    if config.qat:  # the saved float model is not the one evaluated: shift it onto the budget again
        remove_fake_quantizers(student.hf_model)
        evaluation = keep_budget(config, student, task_data, trained.best)
    return save_stage(inputs, config, student, tokenizer, task_data, evaluation, started, trained)
