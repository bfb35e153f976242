"""One training loop for every stage: AdamW, linear warmup/decay, clipping, eval each epoch
(and every `eval_steps` optimiser steps when set).

Stages differ only in their loss (`loss_fn`), their parameter groups and which checkpoint
they keep ("best" dev score or "last"); the loop itself is shared. It runs where `accelerate`
puts it (`compress.accelerator`): on a GPU when there is one, in mixed precision if asked, and
data parallel across the processes of `accelerate launch` / torchrun. The recipe's batch size is
the global batch of one optimiser step, whatever the processes and gradient accumulation.
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

from compress.accelerator import make_accelerator, micro_batch_size
from compress.errors import UserError
from compress.evaluate import EvalResult

log = logging.getLogger(__name__)

_LOOP_KEYS = ("epoch", "step", "train_loss", "examples_per_s")  # of a history row; the rest: dev metrics
LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]
EvaluateFn = Callable[[nn.Module, object], EvalResult]  # (model, accelerator) -> dev evaluation


@dataclass
class TrainResult:
    best: EvalResult  # evaluation of the kept checkpoint
    history: list[dict] = field(default_factory=list)  # per evaluation: loss, dev metrics, examples/s
    steps: int = 0
    examples_per_s: float = 0.0


def show_progress() -> bool:
    """Progress bars on a terminal (or as a notebook's widgets) only: written to a log file, every
    redraw of a bar is one more carriage return on one endless line."""
    return sys.stderr.isatty() or notebook_or_plain_tqdm is not plain_tqdm


def train(
    model: nn.Module,
    make_loader: Callable[[int], DataLoader],
    loss_fn: LossFn,
    evaluate_fn: EvaluateFn,
    param_groups: list[dict],
    settings,
    keep: str = "best",
    description: str = "train",
    mixed_precision: str = "auto",
) -> TrainResult:
    """Train for `settings.epochs` (fractions allowed) and restore the kept checkpoint.

    `make_loader(batch_size)` gives the training loader of one micro-batch of every process
    together (accelerate splits it between them)."""
    accelerator = make_accelerator(mixed_precision, settings.grad_accum_steps)
    loader = make_loader(micro_batch_size(settings, accelerator.num_processes))
    sampler = loader.batch_sampler  # length-grouped, seeded by epoch: the same order in every process
    accumulation = settings.grad_accum_steps
    total_batches = max(1, math.ceil(len(loader) * settings.epochs))
    total_steps = math.ceil(total_batches / accumulation)
    optimizer = torch.optim.AdamW(param_groups, lr=settings.lr)
    # lr rises linearly from 0 over the warm-up steps, then falls linearly to 0 after the last step
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(settings.warmup_ratio * total_steps), total_steps
    )
    wrapped, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    params = [p for group in param_groups for p in group["params"]]
    kept: dict = {"result": None, "state": None}
    batches, step, examples, seconds, epochs = 0, 0, 0, 0.0, math.ceil(settings.epochs)
    history: list[dict] = []

    def checkpoint(epoch: int, losses: list[float], train_seconds: float) -> None:
        """Evaluate on dev, add a history row, log it, and keep the checkpoint by `keep`."""
        evaluation = evaluate_fn(model, accelerator)
        history.append(
            {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": sum(losses) / max(1, len(losses)),
                "examples_per_s": examples / max(train_seconds, 1e-9),
                **evaluation.metrics,
            }
        )
        if accelerator.is_main_process:
            log.info("%s", _describe(description, epochs, total_steps, history[-1]))
        if keep == "last" or kept["result"] is None or evaluation.main > kept["result"].main:
            kept["result"] = evaluation
            kept["state"] = copy.deepcopy(model.state_dict()) if keep == "best" else None

    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        wrapped.train()
        bar = tqdm(
            total=min(len(loader), total_batches - batches),
            desc=f"{description} epoch {epoch + 1}",
            unit="batch",
            dynamic_ncols=True,
            leave=False,
            disable=not (show_progress() and accelerator.is_local_main_process),
        )
        losses, started = [], time.perf_counter()
        for index, batch in enumerate(loader):
            if batches >= total_batches:
                break
            with accelerator.accumulate(wrapped), accelerator.autocast():
                loss, logs = loss_fn(wrapped, batch)
                if not torch.isfinite(loss):  # one host sync per batch, as loss.item() below already costs
                    raise UserError(
                        f"{description}: training diverged (loss {loss.item()} at step {step + 1} of "
                        f"{total_steps}); lower lr or raise warmup_ratio"
                    )
                accelerator.backward(loss)
                stepped = accelerator.sync_gradients
                if stepped:
                    accelerator.clip_grad_norm_(params, settings.max_grad_norm)
                    step += 1
                optimizer.step()  # accelerate's optimizer and scheduler skip accumulation batches
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            batches += 1
            losses.append(loss.item())
            examples += batch["labels"].shape[0] * accelerator.num_processes
            rate = examples / (seconds + time.perf_counter() - started)
            bar.set_postfix(
                loss=f"{losses[-1]:.4f}", ex_s=f"{rate:.0f}", **{k: f"{v:.3g}" for k, v in logs.items()}
            )
            bar.update()
            due = stepped and settings.eval_steps and step % settings.eval_steps == 0
            if due and batches < total_batches and index + 1 < len(loader):
                paused = time.perf_counter()  # mid-epoch; the epoch's end evaluates anyway
                checkpoint(epoch, losses, seconds + paused - started)
                wrapped.train()
                started += time.perf_counter() - paused  # evaluation is not training time
        bar.close()
        seconds += time.perf_counter() - started
        checkpoint(epoch, losses, seconds)
    accelerator.free_memory()  # drops the wrappers; `model` is the trained module itself
    if kept["state"] is not None:
        model.load_state_dict(kept["state"])
    if not all(torch.isfinite(p).all() for p in params):
        raise UserError(f"{description}: training left non-finite weights; lower lr or raise warmup_ratio")
    model.eval()
    rate = examples / max(seconds, 1e-9)
    return TrainResult(best=kept["result"], history=history, steps=step, examples_per_s=rate)


def _describe(description: str, epochs: int, total_steps: int, row: dict) -> str:
    """One log line per evaluation:
    'finetune epoch 2/3, step 400/600: loss 0.4123, 812 examples/s, accuracy 0.9012'."""
    parts = [f"loss {row['train_loss']:.4f}", f"{row['examples_per_s']:.0f} examples/s"]
    parts += [f"{key} {value:.4f}" for key, value in row.items() if key not in _LOOP_KEYS]  # dev metrics
    where = f"epoch {row['epoch']}/{epochs}, step {row['step']}/{total_steps}"
    return f"{description} {where}: " + ", ".join(parts)
