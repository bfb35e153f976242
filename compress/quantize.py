"""Integer quantisation of the encoder's linear layers with torchao 0.18, and quantised artifacts.

Only the encoder's linear layers (Q, K, V, attention output, FFN) are quantised; embeddings,
the pooler and the classifier head stay in float. Token pruning is untouched: `PrunableModel`
calls the same (now quantised) linear modules, so a quantised model still drops tokens.

Schemes (`quantize_encoder`):
    int8_dynamic       int8 weights (per channel) x int8 activations (per token, computed at run
                       time): `Int8DynamicActivationInt8WeightConfig`. Fast on CPU under
                       torch.compile; slower than fp32 in eager mode.
    int8_weight_only   int8 weights, float activations: smaller, no faster on CPU.
    int4_weight_only   int4 weights (groups of 128), bf16 activations: needs a CUDA GPU.
    qat_int8           a model trained with `prepare_qat` (int8 fake quantisation), run on the
                       same real int8 kernels as int8_dynamic. torchao's own QAT convert gives
                       `IntxUnpackedToInt8Tensor`, which dequantises and multiplies in fp32 on
                       CPU: its BOPs would be a fiction. Training fake-quantises activations
                       asymmetrically (torchao has no symmetric per-token fake quantiser), the
                       kernel quantises them symmetrically; the dev score is the real kernel's.

A quantised artifact is the Hugging Face config + tokenizer, `model.safetensors` written through
torchao's flatten helpers, and `quantization.json` naming the scheme. Loading builds the float
model on CPU (never on the meta device: that gives silent NaNs), quantises it with the same
scheme so the module structure matches, then loads the state dict with `assign=True`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from safetensors import SafetensorError, safe_open
from torch import nn

from compress.errors import UserError, read_json_as
from compress.flops import Precision

# Import-time noise: torchao's optional CUDA extensions that a CPU build cannot load, and torch's
# deprecation notes about the enums torchao registers.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

from torchao.prototype.safetensors.safetensors_support import (  # noqa: E402
    flatten_tensor_state_dict,
    unflatten_tensor_state_dict,
)
from torchao.quantization import (  # noqa: E402
    Int4WeightOnlyConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8DynamicActivationIntxWeightConfig,
    Int8WeightOnlyConfig,
    quantize_,
)
from torchao.quantization.granularity import PerAxis  # noqa: E402
from torchao.quantization.qat import QATConfig  # noqa: E402
from torchao.quantization.qat.linear import FakeQuantizedLinear  # noqa: E402

QUANTIZATION_FILE = "quantization.json"
WEIGHTS_FILE = "model.safetensors"
Scheme = Literal["int8_dynamic", "qat_int8", "int8_weight_only", "int4_weight_only"]
Engine = Literal["torchao", "onnxruntime"]  # what runs the quantised model

# Bits of the linear layers' operands per scheme. The attention matmuls (QK^T, AV) multiply two
# activations and stay in float (32 bits on CPU) unless the quantize stage sets attention: int8.
PRECISION: dict[str, Precision] = {
    "int8_dynamic": Precision(weight_bits=8, activation_bits=8),
    "qat_int8": Precision(weight_bits=8, activation_bits=8),
    "int8_weight_only": Precision(weight_bits=8, activation_bits=32),
    "int4_weight_only": Precision(weight_bits=4, activation_bits=16, attention_bits=16),
}


def is_encoder_linear(module: nn.Module, fqn: str) -> bool:
    """The layers that get quantised: linear layers inside the encoder (not pooler, not head)."""
    return isinstance(module, nn.Linear) and ".encoder." in f".{fqn}"


def _qat_base_config() -> Int8DynamicActivationIntxWeightConfig:
    """int8 per-channel weights, int8 per-token activations (torchao's QAT requires asymmetric ones)."""
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))


def check_scheme(scheme: str) -> None:
    """Refuse a scheme this machine cannot run, in one line."""
    if scheme == "int4_weight_only" and not torch.cuda.is_available():
        raise UserError("quantize scheme 'int4_weight_only' needs a CUDA GPU (none found); use int8_dynamic")


def quantize_encoder(hf_model: nn.Module, scheme: str) -> None:
    """Quantise the encoder's linear layers in place."""
    check_scheme(scheme)
    configs = {
        "int8_dynamic": Int8DynamicActivationInt8WeightConfig,
        "qat_int8": Int8DynamicActivationInt8WeightConfig,  # real int8 kernels on QAT-trained weights
        "int8_weight_only": Int8WeightOnlyConfig,
        "int4_weight_only": lambda: Int4WeightOnlyConfig(group_size=128),
    }
    if scheme == "int4_weight_only":
        hf_model.to(device="cuda", dtype=torch.bfloat16)
    quantize_(hf_model, configs[scheme](), filter_fn=is_encoder_linear)


def prepare_qat(hf_model: nn.Module) -> None:
    """Swap the encoder's linear layers for fake-quantised ones (int8 weights and activations)."""
    quantize_(hf_model, QATConfig(_qat_base_config(), step="prepare"), filter_fn=is_encoder_linear)


def remove_fake_quantizers(hf_model: nn.Module) -> None:
    """Back to plain nn.Linear with the trained float weights (what a QAT stage saves)."""
    for name, module in list(hf_model.named_modules()):
        if isinstance(module, FakeQuantizedLinear):
            hf_model.set_submodule(name, module.to_linear())


def precision(scheme: str, int8_attention: bool = False) -> Precision:
    """Operand bits of a quantised model's matmuls (for BOPs)."""
    bits = PRECISION[scheme]
    return replace(bits, attention_bits=8) if int8_attention else bits


class SavedQuantization(BaseModel):
    """quantization.json: the scheme of a quantised artifact's encoder."""

    model_config = ConfigDict(extra="forbid")

    scheme: Scheme
    int8_attention: bool = False  # QK^T and AV in int8
    engine: Engine = "torchao"  # onnxruntime: the artifact is model.onnx (`compress.onnx_model`)


def _cpu_state(hf_model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu() for name, tensor in hf_model.state_dict().items()}


def save_quantized(hf_model: nn.Module, scheme: str, directory: Path, int8_attention: bool = False) -> None:
    """Config + flattened quantised weights (safetensors) + quantization.json."""
    from safetensors.torch import save_file

    directory = Path(directory)
    hf_model.config.save_pretrained(directory)
    tensors, metadata = flatten_tensor_state_dict(_cpu_state(hf_model))
    save_file(tensors, directory / WEIGHTS_FILE, metadata=metadata)
    write_quantization(directory, SavedQuantization(scheme=scheme, int8_attention=int8_attention))


def write_quantization(directory: Path, saved: SavedQuantization) -> None:
    (Path(directory) / QUANTIZATION_FILE).write_text(saved.model_dump_json(indent=2) + "\n")


def saved_quantization(directory: Path) -> SavedQuantization | None:
    """quantization.json of a quantised artifact, validated, or None for a float one."""
    path = Path(directory) / QUANTIZATION_FILE
    return read_json_as(path, SavedQuantization) if path.exists() else None


def load_quantized(directory: Path, hf_model: nn.Module, scheme: str) -> nn.Module:
    """Load a quantised artifact (its `saved_quantization` scheme) into `hf_model`, a float model
    built on CPU from its config.

    The file must hold exactly the tensors, shapes and torchao metadata that quantising this model
    with `scheme` gives: weights of another scheme or model are refused, not assigned.
    """
    path = Path(directory) / WEIGHTS_FILE
    quantize_encoder(hf_model, scheme)
    expected_tensors, expected_metadata = flatten_tensor_state_dict(_cpu_state(hf_model))
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise UserError(f"{path}: not a readable safetensors file ({error})") from None
    problem = _metadata_problem(metadata, expected_metadata) or _tensor_problem(tensors, expected_tensors)
    if problem:
        raise UserError(f"{path} does not fit scheme '{scheme}' of quantization.json, config.json: {problem}")
    state, _ = unflatten_tensor_state_dict(tensors, metadata)
    device = next(hf_model.parameters()).device
    hf_model.load_state_dict({k: v.to(device) for k, v in state.items()}, assign=True)
    return hf_model


def _metadata_problem(saved: dict[str, str], expected: dict[str, str]) -> str | None:
    """What differs between the torchao metadata saved and the metadata the scheme gives."""
    if "tensor_names" not in saved:
        return "no torchao metadata (float weights?)"
    if saved.keys() != expected.keys():
        return _key_problem("metadata entries", saved.keys(), expected.keys())
    differing = [name for name in expected if saved[name] != expected[name]]
    return f"{differing[0]} is quantised differently" if differing else None


def _tensor_problem(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """Missing, unexpected or misshapen tensors."""
    if saved.keys() != expected.keys():
        return _key_problem("tensors", saved.keys(), expected.keys())
    for name, wanted in expected.items():
        found = saved[name]
        if found.shape != wanted.shape or found.dtype != wanted.dtype:
            return f"{name} is {found.dtype} {list(found.shape)}, not {wanted.dtype} {list(wanted.shape)}"
    return None


def _key_problem(what: str, saved, expected) -> str:
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing:
        return f"{len(missing)} {what} missing ({missing[0]}, ...)"
    return f"{len(unexpected)} unexpected {what} ({unexpected[0]}, ...)"
