"""Whether a run can reach what its recipe names, checked before anything trains.

Models and tokenizers: a local folder or the bundled `minilm` is there; a Hugging Face hub id is
looked up in the local cache when `HF_HUB_OFFLINE=1` (no network at all), else asked of the hub
once, with a short timeout and no retries. Data: a GLUE-layout folder is read by `preflight`;
GLUE from the hub is looked up the same way as a model. Each problem is one `UserError` line that
names the model or dataset and the way out.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, constants, scan_cache_dir, try_to_load_from_cache
from huggingface_hub.errors import CacheNotFound, RepositoryNotFoundError

from compress.data.sources import HUB_ID, resolve_data_dir
from compress.errors import UserError
from compress.models import resolve_model
from compress.user_input import quote

HUB_TIMEOUT_S = 10.0
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
OFFLINE_HINT = "HF_HUB_OFFLINE=1 keeps the hub out of reach"


def check_reachable(recipe) -> None:
    """The recipe's model, the teachers its stages name, and its data: reachable, or one line."""
    names = [recipe.model, *(getattr(stage, "teacher", None) for stage in recipe.stages)]
    stage_names = {stage.name for stage in recipe.stages}
    for name in dict.fromkeys(n for n in names if n and n not in stage_names):
        check_model(name)
    if recipe.task != "custom" and resolve_data_dir(recipe.data.dir) is None:
        check_hub_dataset(HUB_ID, f"task {recipe.task}")


def check_model(name: str) -> None:
    """A model (and its tokenizer, which lives beside it) that loading will find."""
    source = resolve_model(name)  # a bad local path is its own one-line error
    if Path(source).is_dir():
        return
    way_out = "--set model=<a local folder or minilm>"
    if _offline():
        if not isinstance(try_to_load_from_cache(source, "config.json"), str):
            raise UserError(
                f"model {quote(name)}: not in the Hugging Face cache, and {OFFLINE_HINT} "
                f"(run once online to cache it, or {way_out})"
            )
        return
    _ask_hub(lambda api: api.model_info(source, timeout=HUB_TIMEOUT_S), f"model {quote(name)}", way_out)


def check_hub_dataset(repo_id: str, what: str) -> None:
    """A hub dataset that `datasets.load_dataset` will find (GLUE when no data folder is given)."""
    way_out = "--data-dir or GLUE_DIR (a GLUE-layout folder)"
    if _offline():
        if not _dataset_cached(repo_id):
            raise UserError(
                f"{what}: no --data-dir or GLUE_DIR, so the data comes from the hub dataset {repo_id}, "
                f"which is not cached, and {OFFLINE_HINT}: give {way_out}"
            )
        return
    ask = lambda api: api.dataset_info(repo_id, timeout=HUB_TIMEOUT_S)  # noqa: E731
    _ask_hub(ask, f"{what}: dataset {repo_id}", way_out)


def _offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, when it is imported)."""
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in TRUE_VALUES


def _dataset_cached(repo_id: str) -> bool:
    """The hub dataset's files in the hub cache, or its prepared copy in the datasets cache."""
    try:
        if any(repo.repo_id == repo_id for repo in scan_cache_dir().repos if repo.repo_type == "dataset"):
            return True
    except CacheNotFound:
        pass
    from datasets import config  # datasets keeps prepared copies apart, as <owner>___<name>

    return (Path(config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")).is_dir()


def _ask_hub(request, what: str, way_out: str) -> None:
    """One hub request; a missing repository or an unreachable hub is one line."""
    try:
        request(HfApi())
    except RepositoryNotFoundError:
        raise UserError(f"{what}: not found on the Hugging Face hub (or private); check the name") from None
    except Exception as error:  # noqa: BLE001 - network errors come from several libraries
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise UserError(
            f"{what}: the Hugging Face hub cannot be reached ({reason}); set HF_HUB_OFFLINE=1 to use "
            f"the local cache, or {way_out}"
        ) from None
