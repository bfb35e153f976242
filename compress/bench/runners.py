"""How each variant of a bench runs: a `Runner` per model, device, dtype and engine.

Torch runners: the plain Hugging Face forward for the baseline (and any unpruned model), the packed
fast path (`compress.bench.fast_path.PackedPruner`) for pruned models, eager or under torch.compile.
ONNX Runtime runners (`compress.onnx_runtime`): a session over an exported graph, fp32 or int8.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from compress import onnx_runtime
from compress.bench.fast_path import PackedPruner
from compress.ltp import PrunableModel
from compress.models import load_model
from compress.onnx_model import OnnxModel
from compress.quantize import PRECISION

log = logging.getLogger(__name__)


def _as_is(batch: dict) -> dict:
    return batch


@dataclass
class Runner:
    """One timed variant: input -> logits (B, C), tokens entering and kept per example and layer (B, L)."""

    variant: str
    device: str
    dtype: str
    compiled: bool
    config: object  # the Hugging Face config, for GFLOPs
    forward: Callable[[object], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    engine: str = "torch"
    prepare: Callable[[dict], object] = _as_is  # a batch to the forward's input, before the timing
    export_s: float | None = None


def make_runner(variant: str, model: PrunableModel, compiled: bool) -> Runner:
    """The plain Hugging Face forward for an unpruned model (or the baseline), else the packed fast path."""
    parameter = model.hf_model.base_model.embeddings.word_embeddings.weight
    quantized = model.quantization and f"int{PRECISION[model.quantization].weight_bits}"
    dtype = quantized or DTYPE_NAMES[parameter.dtype]
    if variant == "baseline" or model.spec is None:
        hf_model = torch.compile(model.hf_model, dynamic=True) if compiled else model.hf_model

        @torch.inference_mode()
        def forward(batch: dict):
            logits = hf_model(**batch).logits
            counts = batch["attention_mask"].sum(dim=1, keepdim=True).expand(-1, model.num_layers)
            return logits, counts, counts

    else:
        pruner = PackedPruner(model, compiled=compiled)

        def forward(batch: dict):  # inference mode inside
            out = pruner(**batch)
            return out.logits, out.tokens_in, out.tokens_kept

    return Runner(variant, parameter.device.type, dtype, compiled, model.config, forward)


DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def onnx_runners(models: dict[str, PrunableModel], example: dict, settings, folder: Path) -> list[Runner]:
    """ONNX Runtime runners of float models (baseline, pruned), fp32 and int8, on CPU and, where ONNX
    Runtime has the CUDA execution provider, on the GPU; `example` traces the export into `folder`."""
    devices = [d for d in settings.devices if d == "cpu" or onnx_runtime.cuda_available()]
    if len(devices) < len(settings.devices):
        log.warning("ONNX Runtime has no CUDA execution provider here: no ONNX Runtime rows on the GPU")
    runners = []
    for variant, model in models.items() if devices else ():
        source = model if model.hf_model.device.type == "cpu" else copy.deepcopy(model).cpu()
        if variant == "baseline" and source.spec is not None:  # unpruned, as the torch baseline runs it
            source = PrunableModel(source.hf_model).eval()
        started = time.perf_counter()
        fp32 = onnx_runtime.export_onnx(source, folder / f"{variant}.onnx", example)
        exported = time.perf_counter() - started
        int8 = onnx_runtime.quantize_int8(fp32, folder / f"{variant}_int8.onnx")
        quantized = time.perf_counter() - started
        for device in devices:
            for dtype, path, spent in (("fp32", fp32, exported), ("int8", int8, quantized)):
                runners.append(
                    session_runner(variant, path, model.config, dtype, device, settings.threads, spent)
                )
    return runners


def session_runner(
    variant: str, path: Path, config, dtype: str, device: str, threads: int, export_s: float = 0.0
) -> Runner:
    """A runner of the ONNX graph at `path` in a session of its own (`threads` intra-op threads);
    `export_s`: what making the graph took, the session's creation added."""
    started = time.perf_counter()
    sessions = onnx_runtime.GraphSessions(path, threads, device)  # with the graph's batch-1 twin, if any
    return Runner(
        variant,
        device,
        dtype,
        False,
        config,
        sessions,
        engine="onnxruntime",
        prepare=sessions.feed,
        export_s=round(export_s + time.perf_counter() - started, 2),
    )


def models_on(name: str, device: str, task) -> list[PrunableModel | OnnxModel]:
    """The model on `device`: as saved on CPU; on CUDA also in bf16 unless it is quantised (an ONNX
    Runtime artifact: on CUDA only where ONNX Runtime has its CUDA execution provider).

    Only the Hugging Face weights change dtype: the thresholds stay fp32, as the scores are.
    """
    model = load_model(name, task.num_labels, task.is_regression)
    if device == "cpu" or isinstance(model, OnnxModel) and onnx_runtime.cuda_available():
        return [model]
    if isinstance(model, OnnxModel):
        return []
    if model.int8_attention:  # torch._int_mm on CUDA wants more than 16 rows: short sequences have fewer
        log.warning("%s: int8 attention is timed on CPU only", name)
        return []
    models = [model.to(device)]
    if not model.quantization:
        half = copy.deepcopy(model)
        half.hf_model.to(torch.bfloat16)
        models.append(half)
    return models
