"""One training loop for every stage: AdamW, linear warmup/decay, clipping, eval each epoch.

Stages differ only in their loss (`loss_fn`), their parameter groups and which checkpoint
they keep ("best" dev score or "last"); the loop itself is shared.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from tqdm.autonotebook import tqdm as notebook_or_plain_tqdm
from tqdm.std import tqdm as plain_tqdm
from transformers import get_linear_schedule_with_warmup

from compress.errors import UserError
from compress.evaluate import EvalResult

log = logging.getLogger(__name__)

_LOOP_KEYS = ("epoch", "step", "train_loss", "examples_per_s")  # of a history row; the rest: dev metrics
LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class TrainResult:
    best: EvalResult  # evaluation of the kept checkpoint
    history: list[dict] = field(default_factory=list)  # per epoch: loss, dev metrics, examples/s
    steps: int = 0
    examples_per_s: float = 0.0


def show_progress() -> bool:
    """Progress bars on a terminal (or as a notebook's widgets) only: written to a log file, every
    redraw of a bar is one more carriage return on one endless line."""
    return sys.stderr.isatty() or notebook_or_plain_tqdm is not plain_tqdm


def train(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: LossFn,
    evaluate_fn: Callable[[nn.Module], EvalResult],
    param_groups: list[dict],
    settings,
    keep: str = "best",
    description: str = "train",
) -> TrainResult:
    """Train for `settings.epochs` (fractions allowed) and restore the kept checkpoint."""
    optimizer = torch.optim.AdamW(param_groups, lr=settings.lr)
    total_steps = max(1, math.ceil(len(loader) * settings.epochs))
    warmup_steps = int(settings.warmup_ratio * total_steps)
    # lr rises linearly from 0 over the warm-up steps, then falls linearly to 0 after the last step
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    params = [p for group in param_groups for p in group["params"]]
    result, best_state, step = None, None, 0
    history: list[dict] = []
    examples, seconds, epochs = 0, 0.0, math.ceil(settings.epochs)
    for epoch in range(epochs):
        loader.batch_sampler.set_epoch(epoch)
        model.train()
        bar = tqdm(
            total=min(len(loader), total_steps - step),
            desc=f"{description} epoch {epoch + 1}",
            unit="batch",
            dynamic_ncols=True,
            leave=False,
            disable=not show_progress(),  # off a terminal, the line logged below is the progress
        )
        losses, started = [], time.perf_counter()
        for batch in loader:
            if step >= total_steps:
                break
            loss, logs = loss_fn(model, batch)
            if not torch.isfinite(loss):  # one host sync per step, as loss.item() below already costs
                raise UserError(
                    f"{description}: training diverged (loss {loss.item()} at step {step + 1} of "
                    f"{total_steps}); lower lr or raise warmup_ratio"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            examples += batch["labels"].shape[0]
            rate = examples / (seconds + time.perf_counter() - started)
            bar.set_postfix(
                loss=f"{losses[-1]:.4f}", ex_s=f"{rate:.0f}", **{k: f"{v:.3g}" for k, v in logs.items()}
            )
            bar.update()
        bar.close()
        seconds += time.perf_counter() - started
        evaluation = evaluate_fn(model)
        history.append(
            {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": sum(losses) / max(1, len(losses)),
                "examples_per_s": examples / seconds,
                **evaluation.metrics,
            }
        )
        log.info("%s", _describe_epoch(description, epochs, history[-1]))
        if keep == "last" or result is None or evaluation.main > result.main:
            result = evaluation
            best_state = copy.deepcopy(model.state_dict()) if keep == "best" else None
    if best_state is not None:
        model.load_state_dict(best_state)
    if not all(torch.isfinite(p).all() for p in params):
        raise UserError(f"{description}: training left non-finite weights; lower lr or raise warmup_ratio")
    model.eval()
    return TrainResult(best=result, history=history, steps=step, examples_per_s=examples / max(seconds, 1e-9))


def _describe_epoch(description: str, epochs: int, row: dict) -> str:
    """One log line per epoch: 'finetune epoch 2/3: loss 0.4123, 812 examples/s, accuracy 0.9012'."""
    parts = [f"loss {row['train_loss']:.4f}", f"{row['examples_per_s']:.0f} examples/s"]
    parts += [f"{key} {value:.4f}" for key, value in row.items() if key not in _LOOP_KEYS]  # dev metrics
    return f"{description} epoch {row['epoch']}/{epochs}: " + ", ".join(parts)
