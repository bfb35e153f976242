"""Stage artifacts: a directory with safetensors weights, tokenizer, config, pruning spec, metrics.

Written to a temporary sibling and renamed into place, so a killed run never leaves a
half-written directory that looks complete.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from functools import cache
from pathlib import Path

import pydantic.dataclasses
from pydantic import ConfigDict
from safetensors import SafetensorError

from compress.errors import UserError, read_json_as
from compress.ltp import PrunableModel
from compress.onnx_model import OnnxModel
from compress.quantize import SavedQuantization, save_quantized, write_quantization

RESULT_FILE = "result.json"  # written last: its presence marks a complete artifact
# What a full, read-only or forbidden disk raises: the user's to fix, not a bug.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


@contextmanager
def atomic_directory(
    final: Path, replace_if: tuple[str, ...] = (RESULT_FILE, "config.json")
) -> Iterator[Path]:
    """Yield a scratch directory that becomes `final` only if the block succeeds.

    The only thing ever removed is what was at `final` itself, and only an empty folder or an
    earlier artifact (a folder holding one of `replace_if`), never a link or someone else's
    folder. A full or read-only disk is a UserError, with the scratch folder removed.
    """
    final = Path(final)
    if final.name in ("", ".", "..") or final.is_symlink():
        raise UserError(f"refusing to write an artifact at {final}: not a plain folder name")
    if final.exists() and not _replaceable(final, replace_if):
        raise UserError(f"refusing to replace {final}: it is not an artifact this tool wrote")
    scratch = final.parent / f".{final.name}.partial-{os.getpid()}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        yield scratch
        retired = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, retired)
        os.replace(scratch, final)
        shutil.rmtree(retired, ignore_errors=True)
    except (OSError, SafetensorError) as error:
        shutil.rmtree(scratch, ignore_errors=True)
        code = _errno(error)
        if code in DISK_ERRORS:
            raise UserError(f"cannot write {final}: {os.strerror(code)}") from None
        raise
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _errno(error: Exception) -> int | None:
    """The OS error number, also from safetensors, which reports it only as "(os error N)"."""
    if isinstance(error, OSError):
        return error.errno
    found = re.search(r"\(os error (\d+)\)", str(error))
    return int(found.group(1)) if found else None


def _replaceable(directory: Path, markers: tuple[str, ...]) -> bool:
    if not directory.is_dir():
        return False
    return not any(directory.iterdir()) or any((directory / name).is_file() for name in markers)


def save_model(model: PrunableModel | OnnxModel, tokenizer, directory: Path) -> None:
    """Hugging Face weights (safetensors; torchao-flattened when quantised) + tokenizer +
    pruning.json when the model prunes; for a model run by ONNX Runtime its graph instead."""
    if isinstance(model, OnnxModel):
        model.save(directory)
        write_quantization(directory, SavedQuantization(scheme=model.quantization, engine="onnxruntime"))
        tokenizer.save_pretrained(directory)
        return
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
    """The stage result (StageResult fields + cache_key) of a complete artifact, or None without
    a result.json. One that does not hold them (corrupt, truncated, edited) is a UserError."""
    path = Path(directory) / RESULT_FILE
    return asdict(read_json_as(path, _result_file())) if path.exists() else None


@cache
def _result_file() -> type:
    """The schema of result.json: a StageResult plus the cache key it was made under."""
    from compress.stages.base import StageResult  # here, not on top: compress.stages imports this module

    @pydantic.dataclasses.dataclass(config=ConfigDict(extra="forbid"))
    class ResultFile(StageResult):
        cache_key: str | None = None

    return ResultFile
