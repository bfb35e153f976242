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

import json
import logging
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from compress.errors import UserError
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


def save_quantized(hf_model: nn.Module, scheme: str, directory: Path, int8_attention: bool = False) -> None:
    """Config + flattened quantised weights (safetensors) + quantization.json."""
    from safetensors.torch import save_file

    directory = Path(directory)
    hf_model.config.save_pretrained(directory)
    state = {name: tensor.detach().cpu() for name, tensor in hf_model.state_dict().items()}
    tensors, metadata = flatten_tensor_state_dict(state)
    save_file(tensors, directory / WEIGHTS_FILE, metadata=metadata)
    info = {"scheme": scheme, "int8_attention": int8_attention}
    (directory / QUANTIZATION_FILE).write_text(json.dumps(info, indent=2) + "\n")


def saved_quantization(directory: Path) -> dict | None:
    """quantization.json of a quantised artifact ({"scheme", "int8_attention"}), or None for a float one."""
    path = Path(directory) / QUANTIZATION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def load_quantized(directory: Path, hf_model: nn.Module, scheme: str) -> nn.Module:
    """Load a quantised artifact (its `saved_quantization` scheme) into `hf_model`, a float model
    built on CPU from its config."""
    from safetensors import safe_open

    quantize_encoder(hf_model, scheme)
    with safe_open(str(Path(directory) / WEIGHTS_FILE), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    state, leftover = unflatten_tensor_state_dict(tensors, metadata)
    if leftover:
        raise UserError(f"{directory}: unexpected tensors in {WEIGHTS_FILE}: {', '.join(sorted(leftover))}")
    device = next(hf_model.parameters()).device
    hf_model.load_state_dict({k: v.to(device) for k, v in state.items()}, assign=True)
    return hf_model
