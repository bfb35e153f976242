"""Stage artifacts: a directory with safetensors weights, tokenizer, config, pruning spec, metrics.

Written to a temporary sibling and renamed into place, so a killed run never leaves a
half-written directory that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from compress.ltp import PrunableModel
from compress.quantize import save_quantized

RESULT_FILE = "result.json"  # written last: its presence marks a complete artifact


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a scratch directory that becomes `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(scratch, final)


def save_model(model: PrunableModel, tokenizer, directory: Path) -> None:
    """Hugging Face weights (safetensors; torchao-flattened when quantised) + tokenizer +
    pruning.json when the model prunes."""
    if model.quantization:
        save_quantized(model.hf_model, model.quantization, directory, model.int8_attention)
    else:
        model.hf_model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    spec = model.export_spec()
    if spec is not None:
        spec.save(directory)


def write_json(path: Path, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_result(directory: Path) -> dict | None:
    """The stage result of a complete artifact, or None."""
    path = Path(directory) / RESULT_FILE
    return json.loads(path.read_text()) if path.exists() else None
