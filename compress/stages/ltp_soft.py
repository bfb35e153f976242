"""Stage `ltp_soft`: learn one threshold per layer with a sigmoid mask, against a pruning pressure.

The pressure is either LTP's L1 term, lambda * sum over layers of the mean soft mask, or a
FLOPs budget (`target_gflops_reduction`, `compress.budget`): a Lagrangian on the expected FLOPs
that drives the thresholds to the stated reduction (as one FLOPs total, or per layer along
top-k's geometric schedule: `budget_shape`), then a common shift of the thresholds that meets it
exactly on calibration inputs. The thresholds have their own AdamW group
(no weight decay). With `distill_alpha` the teacher's logits guide the task loss
(compress.stages.teacher). Evaluation prunes for real; the last checkpoint is kept (the best-scoring
one would be the one that prunes least). After a `topk` stage it starts from top-k's weights,
already trained to work with dropped tokens, and replaces top-k's schedule with thresholds.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Literal

import torch
from pydantic import Field, model_validator

from compress.accelerator import micro_batch_size, num_processes
from compress.budget import FlopsBudget, max_reduction
from compress.errors import UserError
from compress.evaluate import model_inputs
from compress.ltp import PrunableModel, PruningSpec
from compress.recipe import StageBase
from compress.stages.base import StageInputs, StageResult
from compress.stages.common import (
    geometric_budget_ratios,
    keep_budget,
    load_inputs,
    save_stage,
    task_loss,
    train_model,
    weight_groups,
)
from compress.stages.teacher import Teacher, TeacherGuidedConfig, stage_teacher

log = logging.getLogger(__name__)
TRACE_POINTS = 200  # budget trajectory rows kept per stage
REACHABLE = 0.8  # the largest share of the [CLS]-only reduction a budget may ask for
DEFAULT_LAMBDA = 0.1


class LTPSoftConfig(TeacherGuidedConfig):
    kind: Literal["ltp_soft"]
    epochs: float = Field(1.0, gt=0, le=1000)  # paper: 1 on large sets, 10 on RTE/MRPC
    batch_size: int = Field(64, ge=1)
    final_threshold: float = Field(0.01, ge=0)  # theta_final
    temperature: float = Field(1e-3, gt=0)  # T of the sigmoid mask
    # weight of the kept-token (L1) term; unset: 0.1, or no L1 term when a budget replaces it
    lambda_: float | None = Field(None, ge=0, alias="lambda")
    threshold_lr: float = Field(1e-4, gt=0)  # own AdamW group, no weight decay
    prune_from_layer: int = Field(1, ge=0)  # LTP: 1 (layer 0 keeps every token); 0 prunes after its attention
    # soft masks: multiplied through the layers, or each layer's alone as in the authors' code (compress.ltp)
    formulation: Literal["cumulative", "independent"] = "cumulative"
    # a FLOPs budget instead of lambda (compress.budget): GFLOPs reduction to reach, e.g. 3.0
    target_gflops_reduction: float | None = Field(None, gt=1, le=100)
    budget_rho: float = Field(10.0, gt=0)  # weight of the budget's quadratic term
    budget_rate: float = Field(0.5, gt=0)  # step size of its multiplier's dual ascent
    budget_warmup: float = Field(0.5, ge=0, le=1)  # share of the steps while the target falls to it
    # total: one constraint on the expected FLOPs; geometric: one per layer, each pruning layer
    # keeping the same share of the tokens before it (top-k's schedule for the budget, compress.budget)
    budget_shape: Literal["total", "geometric"] = "total"
    # inputs on which the thresholds are shifted to meet the budget exactly: eval (labels unused) or train
    budget_calibration: Literal["eval", "train"] = "eval"

    @property
    def l1_weight(self) -> float:
        return DEFAULT_LAMBDA if self.lambda_ is None else self.lambda_

    @model_validator(mode="after")
    def _one_pressure(self):
        if self.target_gflops_reduction is not None and self.lambda_ is not None:
            raise ValueError("set lambda or target_gflops_reduction, not both (the budget replaces lambda)")
        if self.budget_shape != "total" and self.target_gflops_reduction is None:
            raise ValueError(f"budget_shape {self.budget_shape} shapes a budget: set target_gflops_reduction")
        return self

    def check_order(self, earlier: list[StageBase]) -> None:
        super().check_order(earlier)
        if any(stage.kind == "ltp_hard" for stage in earlier):
            raise ValueError(f"stages.{self.name}: ltp_soft cannot follow an ltp_hard stage")


def run(config: LTPSoftConfig, inputs: StageInputs) -> StageResult:
    started = time.perf_counter()
    model, tokenizer, task_data = load_inputs(inputs)
    model.spec = PruningSpec(
        method="ltp",
        max_length=inputs.recipe.data.max_seq_length,
        final_threshold=config.final_threshold,
        temperature=config.temperature,
        prune_from_layer=config.prune_from_layer,
        formulation=config.formulation,
        target_gflops_reduction=config.target_gflops_reduction,
        budget_calibration=config.budget_calibration,
    )
    model.threshold_offsets.data.zero_()
    model.threshold_offsets.requires_grad_(True)
    groups = weight_groups(model, config.weight_decay)
    groups.append({"params": [model.threshold_offsets], "lr": config.threshold_lr, "weight_decay": 0.0})
    budget = None
    if config.target_gflops_reduction:
        check_reachable(config, model, task_data)
        targets = None  # total: one FLOPs constraint; geometric: top-k's schedule, layer by layer
        if config.budget_shape == "geometric":  # but the last, which keeps [CLS] alone
            targets = geometric_budget_ratios(config, "prune_from_layer", model.config, task_data)[:-1]
        batch = micro_batch_size(config, num_processes())  # a penalty per loader batch, as train runs it
        steps = math.ceil(len(task_data.train_loader(batch)) * config.epochs)
        budget = FlopsBudget(
            config.target_gflops_reduction,
            steps,
            config.budget_warmup,
            model.config,
            config.budget_rho,
            config.budget_rate,
            layer_targets=targets,
        )
    teacher = stage_teacher(config, inputs, task_data.task)
    loss_fn = soft_loss(task_data.task.is_regression, config.l1_weight, budget, teacher)
    precision = inputs.recipe.mixed_precision
    trained = train_model(
        config, model, task_data, groups=groups, keep="last", loss_fn=loss_fn, mixed_precision=precision
    )
    evaluation = keep_budget(config, model, task_data, trained.best)
    trace = budget.trace[:: max(1, len(budget.trace) // TRACE_POINTS)] if budget else []
    return save_stage(inputs, config, model, tokenizer, task_data, evaluation, started, trained, trace=trace)


def check_reachable(config: LTPSoftConfig, model: PrunableModel, task_data) -> None:
    """Refuse a budget that pruning cannot meet on these examples: chasing it collapses to [CLS]."""
    lengths = torch.tensor([len(row["input_ids"]) for row in task_data.train])
    ceiling = max_reduction(model.config, lengths, config.prune_from_layer)
    if config.target_gflops_reduction > REACHABLE * ceiling:
        raise UserError(
            f"stages.{config.name}.target_gflops_reduction: {config.target_gflops_reduction:g}x is out of "
            f"reach on this data: keeping [CLS] alone from layer {config.prune_from_layer} on gives "
            f"{ceiling:.2f}x; ask for at most {REACHABLE * ceiling:.2f}x, or set prune_from_layer: 0"
        )


def soft_loss(regression: bool, lambda_: float, budget: FlopsBudget | None, teacher: Teacher | None = None):
    """Task loss in soft mode (blended with KD when a teacher guides it) + the budget's
    Lagrangian when there is one, else lambda * L1."""

    def loss_fn(model: PrunableModel, batch: dict):
        out = model(**model_inputs(batch), mode="soft", importance=teacher is not None and teacher.ranks)
        loss = task_loss(out.logits, batch["labels"], regression)
        logs = {"kept": float(out.kept_fraction.detach()) / out.tokens_in.shape[1]}  # mean over layers
        if teacher is not None:
            loss, teacher_logs = teacher.loss(out, batch, loss)
            logs |= teacher_logs
        if budget is not None:
            penalty, budget_logs = budget.penalty(out.tokens_in, out.tokens_kept)
            return loss + penalty, logs | budget_logs
        return loss + lambda_ * out.kept_fraction, logs

    return loss_fn
