"""Pieces the training stages share: loading, the task loss, parameter groups, a FLOPs budget
kept after training, saving."""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from compress.accelerator import is_main_process, wait_for_everyone
from compress.artifacts import RESULT_FILE, atomic_directory, save_model, write_json
from compress.budget import calibrate, hard_fraction, topk_share
from compress.data.batching import make_loader
from compress.data.task_data import TaskData, prepare_data
from compress.errors import UserError
from compress.evaluate import EvalResult, evaluate, model_inputs
from compress.flops import FP32, Precision
from compress.ltp import Mode, PrunableModel, geometric_keep_ratios
from compress.models import load_model, load_tokenizer
from compress.recipe import dump_recipe
from compress.stages.base import StageInputs, StageResult
from compress.stages.teacher import Teacher
from compress.training import TrainResult, train

log = logging.getLogger(__name__)
CALIBRATION_EXAMPLES = 2000  # of the training split, with budget_calibration: train


def load_inputs(inputs: StageInputs, need_train: bool = True) -> tuple[PrunableModel, object, TaskData]:
    """Tokenizer, task data and model for a stage (seeded, so runs repeat exactly on CPU)."""
    torch.manual_seed(inputs.recipe.seed)
    tokenizer = load_tokenizer(inputs.model)
    task_data = prepare_data(inputs.recipe, tokenizer, need_train=need_train)
    task = task_data.task
    model = load_model(inputs.model, task.num_labels, task.is_regression)
    return model, tokenizer, task_data


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


def supervised_loss(regression: bool, mode: Mode, teacher: Teacher | None = None):
    """The task loss of the model's forward in `mode`, with the teacher's terms when one guides it."""

    def loss_fn(model: PrunableModel, batch: dict):
        out = model(**model_inputs(batch), mode=mode, importance=teacher is not None and teacher.ranks)
        loss = task_loss(out.logits, batch["labels"], regression)
        if teacher is None:
            return loss, {}
        return teacher.loss(out, batch, loss)

    return loss_fn


def weight_groups(model: PrunableModel, weight_decay: float) -> list[dict]:
    """AdamW groups for the Hugging Face weights: no decay on biases and LayerNorm."""
    decay, no_decay = [], []
    for param in model.hf_model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def calibrate_budget(stage_name: str, model: PrunableModel, task_data: TaskData, batch_size: int) -> None:
    """Shift the thresholds together until the hard model meets the spec's budget on its
    calibration inputs (`budget_calibration`: the first eval split's, labels unused, or at most
    CALIBRATION_EXAMPLES of the training split's)."""
    spec = model.spec
    if spec.budget_calibration == "eval":
        loader = next(iter(task_data.eval_loaders(batch_size).values()))
    else:
        rows = task_data.train[:CALIBRATION_EXAMPLES]
        loader = make_loader(rows, batch_size, task_data.pad_token_id, False, task_data.seed)
    before = hard_fraction(model, loader)
    offset = calibrate(model, loader, 1 / spec.target_gflops_reduction)
    after = hard_fraction(model, loader)
    log.info(
        "%s: thresholds shifted by %+.5f: %.2fx fewer GFLOPs on the %s inputs (%.2fx before; target %.2fx)",
        stage_name, offset, 1 / after, spec.budget_calibration, 1 / before, spec.target_gflops_reduction,
    )  # fmt: skip


def keep_budget(config, model: PrunableModel, task_data: TaskData, evaluation: EvalResult) -> EvalResult:
    """After training under a FLOPs budget (the model's pruning spec names one), the thresholds
    shifted onto it, and the model evaluated again; else `evaluation` as it is. For the stages
    whose evaluated model is not the one they save on the budget: the soft stage (its expected
    counts are not hard ones) and distillation with QAT (its fake quantisers are removed)."""
    if model.spec is None or model.spec.target_gflops_reduction is None:
        return evaluation
    calibrate_budget(config.name, model, task_data, config.eval_batch_size)
    return evaluator(task_data, config.eval_batch_size, "drop")(model)


def on_budget(stage_name: str, task_data: TaskData, batch_size: int, evaluate_fn):
    """`evaluate_fn` after shifting the thresholds onto the spec's budget (`calibrate_budget`)."""

    def evaluate_on_budget(model: PrunableModel, accelerator=None) -> EvalResult:
        calibrate_budget(stage_name, model, task_data, batch_size)
        return evaluate_fn(model, accelerator)

    return evaluate_on_budget


def evaluator(task_data: TaskData, batch_size: int, mode: Mode):
    """The training loop's dev evaluation: (model, accelerator) -> EvalResult."""
    loaders = task_data.eval_loaders(batch_size)
    return lambda model, accelerator=None: evaluate(model, loaders, task_data.task, mode, accelerator)


def save_stage(
    inputs: StageInputs,
    stage,
    model: PrunableModel,
    tokenizer,
    task_data: TaskData,
    evaluation: EvalResult,
    started: float,
    trained: TrainResult | None = None,
    precision: Precision = FP32,
    trace: list[dict] | None = None,
) -> StageResult:
    """Write the artifact (weights, tokenizer, pruning spec, resolved recipe, result) atomically."""
    metrics = dict(evaluation.metrics)
    if trained is not None:
        metrics["train_examples_per_s"] = round(trained.examples_per_s, 2)
    result = StageResult(
        name=stage.name,
        kind=stage.kind,
        artifact=str(inputs.output_dir),
        metrics=metrics,
        main_metric=task_data.task.main_metric,
        gflops=round(evaluation.cost.gflops, 6),
        bops=evaluation.cost.bops(precision),
        bits=precision.as_dict(),
        tokens_per_layer=evaluation.tokens_per_layer,
        seconds=round(time.perf_counter() - started, 2),
        history=trained.history if trained else [],
        trace=trace or [],
    )
    if is_main_process():  # the other processes of a data-parallel run trained the same weights
        with atomic_directory(inputs.output_dir) as scratch:
            save_model(model, tokenizer, scratch)
            (scratch / "recipe.yaml").write_text(dump_recipe(inputs.recipe))
            write_json(scratch / RESULT_FILE, {**result.to_dict(), "cache_key": inputs.cache_key})
    if trained is not None:  # a training stage ran in every process: the next reads this artifact
        wait_for_everyone()
    return result


def train_and_save(
    config,
    inputs: StageInputs,
    model: PrunableModel,
    tokenizer,
    task_data: TaskData,
    started: float,
    train_mode: Mode = "drop",
    teacher: Teacher | None = None,
) -> StageResult:
    """The common body of a training stage: train on the task (guided by the teacher when there is
    one), evaluate with tokens dropped, save."""
    loss_fn = supervised_loss(task_data.task.is_regression, train_mode, teacher)
    precision = inputs.recipe.mixed_precision
    trained = train_model(config, model, task_data, train_mode, None, "best", loss_fn, precision)
    return save_stage(inputs, config, model, tokenizer, task_data, trained.best, started, trained)


def train_model(
    config,
    model: PrunableModel,
    task_data: TaskData,
    train_mode: Mode = "drop",
    groups: list[dict] | None = None,
    keep: str = "best",
    loss_fn=None,
    mixed_precision: str = "auto",
) -> TrainResult:
    """Train with the stage's settings; evaluation drops tokens when the model prunes.

    The loss is the task loss in `train_mode` unless the stage builds its own `loss_fn`. A model
    under a FLOPs budget that keeps its best checkpoint has its thresholds shifted onto the budget
    before every evaluation: the new weights move the scores, so without it the model would train,
    and be chosen, at another reduction than the one it ends on."""
    eval_mode = "off" if model.spec is None else "drop"
    evaluate_dev = evaluator(task_data, config.eval_batch_size, eval_mode)
    if keep == "best" and model.spec is not None and model.spec.target_gflops_reduction is not None:
        evaluate_dev = on_budget(config.name, task_data, config.eval_batch_size, evaluate_dev)
    return train(
        model,
        task_data.train_loader,
        loss_fn or supervised_loss(task_data.task.is_regression, train_mode),
        evaluate_dev,
        groups if groups is not None else weight_groups(model, config.weight_decay),
        config,
        keep=keep,
        description=config.name,
        mixed_precision=mixed_precision,
    )


def geometric_budget_ratios(config, start_key: str, model_config, task_data) -> list[float]:
    """Top-k's keep ratios for the stage's FLOPs budget: from the layer its `start_key` names on,
    each layer keeps the share of the tokens before it that meets the budget on the first eval
    split's lengths (labels unused, as the budget is stated on the dev set)."""
    target, start_layer = config.target_gflops_reduction, getattr(config, start_key)
    rows = next(iter(task_data.evals.values()))
    lengths = torch.tensor([len(row["input_ids"]) for row in rows])
    share = topk_share(model_config, lengths, target, start_layer)
    if share is None:
        raise UserError(
            f"stages.{config.name}.target_gflops_reduction: {target:g}x is out of reach on this data: "
            f"keeping [CLS] alone from layer {start_layer} on does not reach it; lower it or {start_key}"
        )
    log.info("%s: each layer from %d on keeps %.3f of the tokens before it", config.name, start_layer, share)
    return geometric_keep_ratios(model_config.num_hidden_layers, share, start_layer)
