"""Learning from the fine-tuned teacher's logits, in the `distill` stage and inside the pruning stages.

    KD = T^2 * KL(softmax(teacher / T) || softmax(student / T))   (MSE on logits for regression)
    loss = alpha * KD + (1 - alpha) * task loss

The pruning stages (`ltp_soft`, `ltp_hard`, `topk`) take it as `distill_alpha` (0: off) and
`distill_temperature`, as ToP distils the teacher while it prunes; `distill` has it as
`alpha` and `temperature`. The teacher is the stage's `teacher`, else the finetune stage's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from compress.errors import UserError
from compress.evaluate import model_inputs
from compress.models import load_model, resolve_model
from compress.recipe import StageBase, TrainingConfig


def check_teacher_order(stage, earlier: list[StageBase], what: str) -> None:
    """A stage that learns from a teacher names one or follows a finetune stage."""
    if not stage.teacher and not any(other.kind == "finetune" for other in earlier):
        raise ValueError(
            f"stages.{stage.name}: {what} needs a finetune stage before it or 'teacher' "
            "(a fine-tuned model: artifact directory or hub id)"
        )


def check_teacher_exists(stage) -> None:
    if stage.teacher:
        try:
            resolve_model(stage.teacher)
        except UserError as error:
            raise UserError(f"stages.{stage.name}.teacher: {error}") from None


class TeacherGuidedConfig(TrainingConfig):
    """A pruning stage's optional distillation from the teacher's logits while it trains."""

    teacher: str | None = None  # artifact dir or model id; default: the finetune stage's output
    distill_alpha: float = Field(0.0, ge=0, le=1)  # weight of the KD term; 0: the task loss alone
    distill_temperature: float = Field(2.0, gt=0)

    def check_order(self, earlier: list[StageBase]) -> None:
        if self.distill_alpha > 0:
            check_teacher_order(self, earlier, f"{self.kind} with distill_alpha")

    def preflight(self) -> None:
        if self.distill_alpha > 0:
            check_teacher_exists(self)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, regression: bool):
    """T^2 * KL(teacher || student) on temperature-softened logits, batch mean; MSE for regression."""
    if regression:
        return F.mse_loss(student, teacher)
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2


class Teacher:
    """The frozen teacher (full length, eval mode) and the KD term against its outputs."""

    def __init__(self, source: str, num_labels: int, regression: bool, temperature: float, alpha: float):
        self.model = load_model(source, num_labels, regression).eval().requires_grad_(False)
        self.regression, self.temperature, self.alpha = regression, temperature, alpha

    def outputs(self, batch: dict):
        inputs = model_inputs(batch)
        if self.model.device != inputs["input_ids"].device:  # where accelerate put the student
            self.model.to(inputs["input_ids"].device)
        with torch.no_grad():
            return self.model(**inputs, mode="drop")

    def blend(self, student_logits: torch.Tensor, target_logits: torch.Tensor, task: torch.Tensor):
        """alpha * KD + (1 - alpha) * the task loss, and the KD term for the progress logs."""
        distilled = kd_loss(student_logits, target_logits, self.temperature, self.regression)
        return self.alpha * distilled + (1 - self.alpha) * task, {"kd": float(distilled.detach())}


def stage_teacher(config: TeacherGuidedConfig, inputs, task) -> Teacher | None:
    """The teacher of a pruning stage with `distill_alpha` > 0, else None."""
    if config.distill_alpha == 0:
        return None
    return Teacher(
        inputs.teacher, task.num_labels, task.is_regression, config.distill_temperature, config.distill_alpha
    )
