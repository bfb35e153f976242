"""Dev-set evaluation: the task's metrics plus the real per-example, per-layer token counts."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from compress.data.metrics import compute_metrics
from compress.data.task_data import prepare_data
from compress.data.tasks import TaskSpec
from compress.flops import EncoderCost, cost_from_config
from compress.ltp import Mode, PrunableModel
from compress.models import load_model, load_tokenizer
from compress.recipe import Recipe


@dataclass
class EvalResult:
    metrics: dict[str, float]  # every split's metrics; splits after the first get a suffix
    main_metric: str  # the task's main metric (on the first split: checkpoints are chosen by it)
    main: float
    tokens_in: torch.Tensor  # (E, L) first split
    tokens_kept: torch.Tensor  # (E, L)
    cost: EncoderCost
    seconds: float

    @property
    def tokens_per_layer(self) -> list[float]:
        """Mean number of tokens entering each layer."""
        return [round(float(x), 3) for x in self.tokens_in.double().mean(0)]


def model_inputs(batch: dict) -> dict:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return {key: batch[key] for key in keys if key in batch}


@torch.no_grad()
def predict(model: PrunableModel, loader: DataLoader, mode: Mode, accelerator=None):
    """Logits, labels and token counts over a loader, in loader order. With an `accelerator`,
    each process predicts its share of every batch and all of them get the whole result."""
    model.eval()
    device = model.device
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    outputs = []
    for batch in loader:
        out = model(**{k: v.to(device) for k, v in model_inputs(batch).items()}, mode=mode)
        parts = (out.logits.float(), batch["labels"].to(device), out.tokens_in, out.tokens_kept)
        if accelerator is not None:
            parts = accelerator.gather_for_metrics(parts)
        outputs.append([part.cpu() for part in parts])
    logits, labels, tokens_in, tokens_kept = (torch.cat(column) for column in zip(*outputs, strict=True))
    return logits, labels, tokens_in, tokens_kept


def split_suffix(split: str, index: int) -> str:
    """'' for the first split, else '_mismatched' for 'validation_mismatched' and the like."""
    return "" if index == 0 else "_" + split.removeprefix("validation_")


def evaluate(
    model: PrunableModel,
    loaders: dict[str, DataLoader],
    task: TaskSpec,
    mode: Mode = "drop",
    accelerator=None,
) -> EvalResult:
    """The task's metrics on every split and the token counts of the first (`predict`)."""
    started = time.perf_counter()
    metrics: dict[str, float] = {}
    counts = None
    for index, (split, loader) in enumerate(loaders.items()):
        logits, labels, tokens_in, tokens_kept = predict(model, loader, mode, accelerator)
        scores = compute_metrics(task, logits.numpy(), labels.numpy())
        metrics.update({name + split_suffix(split, index): value for name, value in scores.items()})
        if counts is None:
            counts = (tokens_in, tokens_kept)
            main = scores[task.main_metric]
    cost = cost_from_config(model.config, *counts)
    return EvalResult(
        metrics={k: float(np.round(v, 6)) for k, v in metrics.items()},
        main_metric=task.main_metric,
        main=float(main),
        tokens_in=counts[0],
        tokens_kept=counts[1],
        cost=cost,
        seconds=time.perf_counter() - started,
    )


def evaluate_saved(recipe: Recipe, model_name: str, prune: bool = True, batch_size: int = 128) -> EvalResult:
    """Load a model (id, path or artifact) and evaluate it on the recipe's dev data.

    prune=False ignores a pruning spec and runs the plain Hugging Face forward.
    """
    tokenizer = load_tokenizer(model_name)
    task_data = prepare_data(recipe, tokenizer, need_train=False)
    task = task_data.task
    model = load_model(model_name, task.num_labels, task.is_regression)
    if not prune:
        model.spec = None
    return evaluate(model, task_data.eval_loaders(batch_size), task, mode="drop" if prune else "off")
