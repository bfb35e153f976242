"""Learning from the fine-tuned teacher, in the `distill` stage and inside the pruning stages.

    KD = T^2 * KL(softmax(teacher / T) || softmax(student / T))   (MSE on logits for regression)
    loss = alpha * KD + (1 - alpha) * task loss  [+ rank_weight * RANK]

The pruning stages (`ltp_soft`, `ltp_hard`, `topk`) take it as `distill_alpha` (0: off) and
`distill_temperature`, as ToP distils the teacher while it prunes; `distill` has it as
`alpha` and `temperature`. The teacher is the stage's `teacher`, else the finetune stage's output.

RANK (`distill_rank_weight`) is ToP's ranking distillation: the teacher's last layer ranks the
tokens better than the pruned model's early layers, so each pruning layer's importance scores are
taught that ranking. Per layer and example, over the tokens the layer ranks ([CLS] aside, it is
always kept), both scores normalised to distributions, p = s / sum(s):

    RANK = mean over pruning layers and examples of KL(p_teacher || p_student)

(ListNet's listwise loss with log-scores as logits; ToP uses LambdaLoss, a listwise loss too.)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field

from compress.errors import UserError
from compress.evaluate import model_inputs
from compress.ltp import PRUNING_FILE, LayerImportance, PrunedOutput
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
    """A pruning stage's optional distillation from the teacher (logits, token ranking) while it trains."""

    teacher: str | None = None  # artifact dir or model id; default: the finetune stage's output
    distill_alpha: float = Field(0.0, ge=0, le=1)  # weight of the KD term; 0: the task loss alone
    distill_temperature: float = Field(2.0, gt=0)
    distill_rank_weight: float = Field(0.0, ge=0)  # weight of the ranking term (RANK above); 0: off

    @property
    def has_teacher(self) -> bool:
        return self.distill_alpha > 0 or self.distill_rank_weight > 0

    def check_order(self, earlier: list[StageBase]) -> None:
        if self.has_teacher:
            option = "distill_alpha" if self.distill_alpha > 0 else "distill_rank_weight"
            check_teacher_order(self, earlier, f"{self.kind} with {option}")

    def preflight(self) -> None:
        if self.has_teacher:
            check_teacher_exists(self)
        if self.distill_rank_weight > 0 and self.teacher:
            if (Path(resolve_model(self.teacher)) / PRUNING_FILE).is_file():
                raise UserError(
                    f"stages.{self.name}.distill_rank_weight: the teacher {self.teacher} prunes tokens "
                    f"(it has {PRUNING_FILE}); the ranking is learned from an unpruned teacher"
                )


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, regression: bool):
    """T^2 * KL(teacher || student) on temperature-softened logits, batch mean; MSE for regression."""
    if regression:
        return F.mse_loss(student, teacher)
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2


def rank_loss(layers: list[LayerImportance], target: LayerImportance) -> torch.Tensor:
    """RANK (module docstring): each layer's scores against `target`, the unpruned teacher's last
    layer's (every input position), matched by input position; rows with under two ranked tokens,
    or none the teacher scored, are skipped."""
    teacher = target.score * target.live
    losses = []
    for layer in layers:
        ranked = layer.live & (layer.positions > 0)
        p_teacher = teacher.gather(1, layer.positions) * ranked
        student = layer.score.clamp_min(1e-12) * ranked
        rows = (ranked.sum(dim=1) > 1) & (p_teacher.sum(dim=1) > 0)
        p_teacher = p_teacher / p_teacher.sum(dim=1, keepdim=True).clamp_min(1e-12)
        total = student.sum(dim=1, keepdim=True).clamp_min(1e-12)
        log_student = torch.log(student.clamp_min(1e-12)) - torch.log(total)
        kl = torch.where(ranked, torch.xlogy(p_teacher, p_teacher) - p_teacher * log_student, 0.0).sum(dim=1)
        losses.append(kl[rows].sum() / rows.sum().clamp_min(1))
    return torch.stack(losses).mean() if losses else target.score.new_zeros(())


class Teacher:
    """The frozen teacher (full length, eval mode) and the distillation terms against its outputs."""

    def __init__(
        self,
        source: str,
        num_labels: int,
        regression: bool,
        temperature: float,
        alpha: float,
        rank_weight: float = 0.0,
    ):
        self.model = load_model(source, num_labels, regression).eval().requires_grad_(False)
        self.regression, self.temperature, self.alpha = regression, temperature, alpha
        self.rank_weight = rank_weight

    @property
    def ranks(self) -> bool:
        """Whether the student's forward must return its importance scores (`loss`)."""
        return self.rank_weight > 0

    def outputs(self, batch: dict) -> PrunedOutput:
        inputs = model_inputs(batch)
        if self.model.device != inputs["input_ids"].device:  # where accelerate put the student
            self.model.to(inputs["input_ids"].device)
        with torch.no_grad():
            return self.model(**inputs, mode="drop", importance=self.ranks)

    def blend(self, student_logits: torch.Tensor, target_logits: torch.Tensor, task: torch.Tensor):
        """alpha * KD + (1 - alpha) * the task loss, and the KD term for the progress logs."""
        distilled = kd_loss(student_logits, target_logits, self.temperature, self.regression)
        return self.alpha * distilled + (1 - self.alpha) * task, {"kd": float(distilled.detach())}

    def loss(self, student: PrunedOutput, batch: dict, task: torch.Tensor):
        """`blend` against the teacher's outputs on `batch`, + rank_weight * RANK when it ranks (the
        student's forward ran with importance=True)."""
        target = self.outputs(batch)
        loss, logs = self.blend(student.logits, target.logits, task)
        if self.ranks:
            ranking = rank_loss(student.importance, target.importance[-1])
            loss = loss + self.rank_weight * ranking
            logs["rank"] = float(ranking.detach())
        return loss, logs


def stage_teacher(config: TeacherGuidedConfig, inputs, task) -> Teacher | None:
    """The teacher of a pruning stage that learns from one (`has_teacher`), else None."""
    if not config.has_teacher:
        return None
    return Teacher(
        inputs.teacher,
        task.num_labels,
        task.is_regression,
        config.distill_temperature,
        config.distill_alpha,
        config.distill_rank_weight,
    )
