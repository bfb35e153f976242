"""Where training runs: one `accelerate.Accelerator` per training stage.

On a GPU when there is one (else the CPU), in mixed precision when asked ("auto": bf16 on a GPU
that has it, else what `accelerate launch --mixed_precision` set, else fp32), and data parallel
across the processes that `accelerate launch --num_processes N` or torchrun start. Every process
runs the same stages; only the main one writes artifacts, summaries and tracking runs.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list

from compress.errors import UserError


def resolve_mixed_precision(setting: str) -> str:
    """ "no", "bf16" or "fp16" for a recipe's setting ("auto" decides by the launcher and the GPU)."""
    if setting != "auto":
        return setting
    if launched := os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return launched
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(mixed_precision: str, grad_accum_steps: int) -> Accelerator:
    """The accelerator of one training stage. Batches from its prepared loaders are split between
    the processes (so the loader's batch is the global one)."""
    precision = resolve_mixed_precision(mixed_precision)
    try:
        return Accelerator(
            mixed_precision=precision,
            gradient_accumulation_steps=grad_accum_steps,
            dataloader_config=DataLoaderConfiguration(split_batches=True),
        )
    except ValueError as error:  # fp16 without a GPU; a precision other than the process's first
        reason = str(error).split(". ")[0].split(", restart")[0]
        raise UserError(f"mixed_precision {precision}: {reason}") from None


def micro_batch_size(settings, num_processes: int) -> int:
    """Examples per loader batch, all processes together: the stage's batch_size (one optimiser
    step) over its gradient accumulation steps; it must split evenly."""
    parts = settings.grad_accum_steps * num_processes
    if settings.batch_size % parts:
        raise UserError(
            f"stages.{settings.name}.batch_size: {settings.batch_size} does not split into "
            f"{settings.grad_accum_steps} accumulation steps x {num_processes} processes"
        )
    return settings.batch_size // settings.grad_accum_steps


def num_processes() -> int:
    """The processes of this run: N under `accelerate launch --num_processes N` or torchrun, else 1."""
    return PartialState().num_processes


def is_main_process() -> bool:
    return PartialState().is_main_process


def wait_for_everyone() -> None:
    """A barrier across the processes (nothing with one)."""
    PartialState().wait_for_everyone()


def main_process_agrees(ok: bool) -> bool:
    """The main process's `ok`, in every process (the others' value is ignored): so helper processes
    stop with the main one when its checks fail, instead of waiting for it in a collective."""
    if PartialState().num_processes == 1:
        return ok
    flag = [ok]
    broadcast_object_list(flag, from_process=0)
    return flag[0]
