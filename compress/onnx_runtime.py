"""ONNX Runtime: the peer a user deploys without us (DESIGN §5), and our pruned model run by it.

`export_onnx` writes a `PrunableModel` as one ONNX graph with dynamic batch and sequence axes:
inputs input_ids, attention_mask (and token_type_ids where the model has token types), outputs
logits (B, C), tokens_in and tokens_kept (B, L) int64. The unpruned model is the plain Hugging Face
forward (attention as loaded, SDPA; eager exports to the same speed), then
`onnxruntime.transformers.optimizer` fuses it as a user would. A pruned model is
`PrunableModel.forward(mode="drop")`: its packing and re-padding of the kept tokens are NonZero,
Gather and ScatterND with a data-dependent length (`ltp._finish_kept`), so ONNX Runtime runs it
without Python in the loop. The optimizer is
not applied there: it fused LayerNorm and GELU, left the outputs unchanged and measured no faster
(MiniLM, SST-2, 2 threads). A pruned model is exported twice: for any batch, and for one
unpadded request (NAME_b1.onnx beside it: no attention mask, no key masking, no re-padding of the
kept tokens; `GraphSessions` runs single unpadded requests on it).

`quantize_int8` is ONNX Runtime's dynamic int8 (weights per output channel); only matmuls with a
constant B (the linear layers) are quantised, so QK^T and AV, and with them LTP's importance
scores, stay fp32.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from compress.errors import UserError
from compress.ltp import PrunableModel

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("logits", "tokens_in", "tokens_kept")


class _DropForward(nn.Module):
    """The model as the graph sees it: (logits (B, C), tokens_in (B, L), tokens_kept (B, L))."""

    def __init__(self, model: PrunableModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        out = self.model(input_ids, attention_mask, token_type_ids, mode="drop")
        return out.logits, out.tokens_in, out.tokens_kept


def input_names(config, batch_one: bool = False) -> list[str]:
    """The graph's inputs: token_type_ids only where the model has token types (not RoBERTa); no
    attention_mask in a batch-1 twin, whose one request has no padding."""
    names = ["input_ids"] if batch_one else ["input_ids", "attention_mask"]
    return names + ["token_type_ids"] if getattr(config, "type_vocab_size", 0) > 1 else names


def check_exportable(model: PrunableModel) -> None:
    """Refuse, in one line, a model whose ONNX graph would not be the float model it stands for."""
    dtype = model.hf_model.base_model.embeddings.word_embeddings.weight.dtype
    if model.quantization:
        problem = f"torchao-quantised ({model.quantization})"
    elif model.int8_attention:
        problem = "int8-attention"
    elif dtype != torch.float32:
        problem = str(dtype).removeprefix("torch.")
    else:
        return
    raise UserError(f"ONNX export: cannot export a {problem} model (export the fp32 float model instead)")


def batch_one_path(path: Path) -> Path:
    """Where the batch-1 twin of the graph at `path` lives: NAME_b1.onnx beside it. The twin runs
    one unpadded request: no re-padding of the kept tokens, no attention mask, no key masking."""
    return path.with_name(f"{path.stem}_b1{path.suffix}")


def export_onnx(model: PrunableModel, path: Path, example_batch: dict) -> Path:
    """Write `model` (on CPU, fp32) to `path` as ONNX, and a pruned model's batch-1 twin beside it;
    `example_batch` only traces them (any size)."""
    check_exportable(model)
    if model.spec is not None:
        _export(model, batch_one_path(path), example_batch, batch_one=True)
    return _export(model, path, example_batch, batch_one=False)


def _export(model: PrunableModel, path: Path, example_batch: dict, batch_one: bool) -> Path:
    """One graph: dynamic batch and sequence axes, or one unpadded row (`batch_one`)."""
    names = input_names(model.config, batch_one)
    example = _example_inputs(example_batch, names, batch_one)
    axes = {1: "sequence"} if batch_one else {0: "batch", 1: "sequence"}
    dynamic = {name: axes for name in names}
    with torch.no_grad(), _quiet():
        torch.onnx.export(
            _DropForward(model).eval(),
            kwargs=example,
            f=str(path),
            input_names=names,  # positional: `example` is in the forward's argument order
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        fused = _optimize_bert(path, model.config) if model.spec is None else {}
    log.debug("%s exported; the optimizer fused %s", path.name, fused)
    return path


@contextlib.contextmanager
def _quiet():
    """Log records up to warnings and Python's UserWarning/FutureWarning off meanwhile (process-wide,
    for the seconds it takes): the exporter, onnxscript, the optimizer and the quantizer log hundreds
    of lines per graph at INFO (a line per folded constant or tensor left in float), and warn about
    torchvision ops and about pre-processing (symbolic shape inference fails on dynamo graphs)."""
    disabled = logging.root.manager.disable
    logging.disable(max(disabled, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logging.disable(disabled)


def _example_inputs(batch: dict, names: list[str], batch_one: bool) -> dict[str, torch.Tensor]:
    """CPU int64 inputs in argument order: the first row, unpadded, for a batch-1 graph, else at
    least two rows (torch.export would take a batch of one for a constant size)."""
    ids = batch["input_ids"]
    example = {name: batch.get(name, torch.zeros_like(ids)).cpu().long() for name in names}
    if batch_one:
        length = int(batch["attention_mask"][0].sum()) if "attention_mask" in batch else ids.shape[1]
        return {name: tensor[:1, :length] for name, tensor in example.items()}
    return {name: tensor.repeat(2, 1) if len(tensor) < 2 else tensor for name, tensor in example.items()}


def _optimize_bert(path: Path, config) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer in place, as a user runs it; returns what it fused. On a
    dynamo graph it fuses LayerNorm and GELU but not attention, whose pattern it knows from the
    TorchScript exporter. That graph, attention fused, measured at most 6% faster in fp32 and no
    faster in int8 (MiniLM, SST-2, 2 threads); the pruned graph needs the dynamo exporter anyway."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(path), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
    )
    optimized.save_model_to_file(str(path))
    return {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}


def quantize_int8(fp32_path: Path, int8_path: Path) -> Path:
    """Dynamic int8 of the linear layers (weights per output channel, activations per batch), of
    the graph and of its batch-1 twin where it has one."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pairs = [(fp32_path, int8_path), (batch_one_path(fp32_path), batch_one_path(int8_path))]
    with _quiet():
        for source, target in pairs:
            if source.is_file():
                quantize_dynamic(
                    source,
                    target,
                    per_channel=True,
                    weight_type=QuantType.QInt8,
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
                )
    return int8_path


def cuda_available() -> bool:
    """Whether ONNX Runtime can run on the GPU here (the onnxruntime-gpu build and a GPU)."""
    return torch.cuda.is_available() and "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def make_session(path: Path, threads: int, device: str = "cpu") -> onnxruntime.InferenceSession:
    """An inference session: `threads` intra-op threads, one inter-op, sequential, all graph
    optimisations; on `device` cuda the CUDA execution provider (CPU for what it lacks). A graph
    ONNX Runtime cannot load is refused in one line naming its file."""
    if device == "cuda" and not cuda_available():
        raise UserError("ONNX Runtime: no CUDA execution provider here (install onnxruntime-gpu)")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = (["CUDAExecutionProvider"] if device == "cuda" else []) + ["CPUExecutionProvider"]
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own, undocumented exception types
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: ONNX Runtime cannot load it ({first})") from None


class GraphSessions:
    """Sessions over a graph and its batch-1 twin where there is one: a single unpadded request
    runs on the twin (10-14% faster at batch 1 in int8: MiniLM, SST-2, 2 threads), any other on
    the graph."""

    def __init__(self, path: Path, threads: int, device: str = "cpu"):
        self.general = make_session(path, threads, device)
        twin = batch_one_path(Path(path))
        self.batch_one = make_session(twin, threads, device) if twin.is_file() else None
        self._batch_one_inputs = [node.name for node in self.batch_one.get_inputs()] if self.batch_one else []

    def feed(self, batch: dict) -> dict[str, np.ndarray]:
        return session_feed(self.general, batch)

    def __call__(self, feed: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = feed["attention_mask"]
        if self.batch_one is not None and len(mask) == 1 and mask.all():
            return run_session(self.batch_one, {name: feed[name] for name in self._batch_one_inputs})
        return run_session(self.general, feed)


def session_feed(session: onnxruntime.InferenceSession, batch: dict) -> dict[str, np.ndarray]:
    """A batch of tensors as the session's numpy inputs (zero token types where the batch has none)."""
    ids = batch["input_ids"]
    names = [node.name for node in session.get_inputs()]
    return {name: batch.get(name, torch.zeros_like(ids)).cpu().long().numpy() for name in names}


def run_session(
    session: onnxruntime.InferenceSession, feed: dict[str, np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (B, C), tokens_in (B, L), tokens_kept (B, L) as CPU tensors."""
    logits, tokens_in, tokens_kept = session.run(list(OUTPUT_NAMES), feed)
    return torch.from_numpy(logits), torch.from_numpy(tokens_in), torch.from_numpy(tokens_kept)
