"""Data sources: find GLUE (a GLUE-layout folder or the hub), slice and tokenise.

Reading files (GLUE TSVs, a recipe's own CSV / TSV / JSON files) is `compress.data.files`;
batching and padding, `compress.data.batching`.
An example is `{"text": str, "text_pair": str | None, "label": int | float}`; a tokenised
example is `{"input_ids": [...], "token_type_ids": [...] (if the tokenizer makes them),
"label": ...}`. Class labels are integers in `TaskSpec.labels` order, which is the hub's
order, so a GLUE folder and `nyu-mll/glue` give identical examples.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from compress.data.files import make_example, read_glue_tsv, require_columns, require_file
from compress.data.tasks import HUB_LABEL_COLUMN, TaskSpec
from compress.errors import UserError
from compress.paths import user_path

logger = logging.getLogger(__name__)

HUB_ID = "nyu-mll/glue"
_TOKENIZE_CHUNK = 2048  # examples per fast-tokenizer call: fast, bounded memory


# ---------------------------------------------------------------- where the data comes from


def resolve_data_dir(data_dir: str | None) -> Path | None:
    """The GLUE-layout folder to read: `data_dir`, else env GLUE_DIR, else None (the hub)."""
    source = "data dir"
    if not data_dir:
        data_dir, source = os.environ.get("GLUE_DIR") or None, "GLUE_DIR"
    if data_dir is None:
        return None
    path = user_path(data_dir, source)
    if not path.is_dir():
        raise UserError(f"{source}: folder {str(path)!r} does not exist")
    return path


def load_glue(
    task: TaskSpec,
    data_dir: Path | None,
    need_train: bool = True,
    hub_id: str = HUB_ID,
    cache_dir: str | None = None,
) -> dict[str, list[dict]]:
    """Load a GLUE task's splits: {"train": [...], <eval split>: [...], ...}.

    From `data_dir/<task.glue_dir>/<file>` when data_dir is given, else from the hub
    dataset `hub_id` (or a local folder laid out like it). With need_train=False the train
    split is neither required nor loaded (eval-only callers).
    """
    if data_dir is None:
        return _load_glue_hub(task, hub_id, need_train, cache_dir)
    splits = {}
    for split, path in glue_files(task, data_dir, need_train).items():
        require_file(path, f"task {task.name} ({split} split): data file")
        splits[split] = read_glue_tsv(task, path)
    return splits


def glue_files(task: TaskSpec, data_dir: Path, need_train: bool = True) -> dict[str, Path]:
    """The files a task reads from a GLUE-layout folder, by split (train first when needed)."""
    names = {"train": task.train_file} if need_train else {}
    names.update(task.eval_files)
    return {split: Path(data_dir) / task.glue_dir / name for split, name in names.items()}


def _load_glue_hub(
    task: TaskSpec, hub_id: str, need_train: bool, cache_dir: str | None
) -> dict[str, list[dict]]:
    ours_to_hub = {"train": "train"} if need_train else {}
    ours_to_hub.update(task.hub_eval_splits)
    loaded = _load_hub_dataset(task, hub_id, list(ours_to_hub.values()), cache_dir)
    splits = {}
    for ours, hub in ours_to_hub.items():
        where = f"{hub_id} {task.hub_config}/{hub}"
        if hub not in loaded:
            raise UserError(f"task {task.name}: {where}: split not found (splits: {', '.join(loaded)})")
        table = loaded[hub]
        require_columns(where, table.column_names, (*task.hub_text_columns, HUB_LABEL_COLUMN))
        columns = table[:]  # column -> list, in one go
        cast = float if task.is_regression else int
        labels = [cast(v) for v in columns[HUB_LABEL_COLUMN]]
        texts = list(zip(*(columns[c] for c in task.hub_text_columns), strict=True))
        splits[ours] = [make_example(t, y) for t, y in zip(texts, labels, strict=True) if y != -1]
        if len(splits[ours]) < len(labels):
            logger.warning("%s: skipped %d unlabelled rows", where, len(labels) - len(splits[ours]))
    return splits


def _load_hub_dataset(task: TaskSpec, hub_id: str, hub_splits: list[str], cache_dir: str | None) -> Any:
    import datasets  # slow to import; only the hub path needs it

    folder = Path(hub_id)
    if folder.is_dir() and not (folder / "README.md").is_file():
        # A bare folder laid out like the hub repo has no config names: name the files, as
        # the hub README does for its configs ("sst2/train-*", ...).
        selection = {"data_files": {split: f"{task.hub_config}/{split}-*" for split in hub_splits}}
    else:
        # The hub (or a copy of its repo with the README): load the config by name, the one
        # form that HF_DATASETS_OFFLINE=1 can later serve from the local cache.
        selection = {"name": task.hub_config}
    try:
        return datasets.load_dataset(hub_id, cache_dir=cache_dir, **selection)
    except (ConnectionError, FileNotFoundError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"task {task.name}: cannot load config {task.hub_config!r} of {hub_id!r}: {reason};"
            " set --data-dir or GLUE_DIR to a GLUE-layout folder"
        ) from e


# ---------------------------------------------------------------- slicing and tokenising


def slice_examples(examples: list[dict], max_samples: int | None, seed: int, what: str) -> list[dict]:
    """A deterministic subset of at most max_samples examples, kept in original order.

    Depends only on (examples, max_samples, seed), never on global RNG state. `what` names
    the split and its source (file) in the error raised when the result is empty.
    """
    if max_samples is None or max_samples >= len(examples):
        chosen = examples
    else:
        permutation = np.random.default_rng(seed).permutation(len(examples))
        chosen = [examples[i] for i in sorted(permutation[: max(max_samples, 0)])]
    if not chosen:
        raise UserError(f"{what}: slice is empty ({len(examples)} examples, max_samples={max_samples})")
    return chosen


def filter_by_length(tokenized: list[dict], length_range: tuple[int, int] | None) -> list[dict]:
    """Keep examples whose token count lies in [min, max], both inclusive (None: keep all)."""
    if length_range is None:
        return tokenized
    low, high = length_range
    if low > high:
        raise UserError(f"length range: min {low} is greater than max {high}")
    return [f for f in tokenized if low <= len(f["input_ids"]) <= high]


def tokenize(examples: list[dict], tokenizer: Any, max_seq_length: int) -> list[dict]:
    """Tokenise with truncation to max_seq_length (longest_first for pairs), no padding."""
    if max_seq_length < 1:
        raise UserError(f"max_seq_length: must be positive, got {max_seq_length}")
    features = []
    for start in range(0, len(examples), _TOKENIZE_CHUNK):
        chunk = examples[start : start + _TOKENIZE_CHUNK]
        pairs = [e["text_pair"] for e in chunk]
        has_pair = [p is not None for p in pairs]
        if any(has_pair) and not all(has_pair):
            raise ValueError("some examples have a text_pair and some do not")
        encoded = tokenizer(
            [e["text"] for e in chunk],
            pairs if all(has_pair) else None,
            truncation=True,  # = "longest_first" for pairs
            max_length=max_seq_length,
            return_attention_mask=False,
        )
        type_ids = encoded.get("token_type_ids")
        for i, example in enumerate(chunk):
            feature = {"input_ids": encoded["input_ids"][i]}
            if type_ids is not None:
                feature["token_type_ids"] = type_ids[i]
            feature["label"] = example["label"]
            features.append(feature)
    return features
