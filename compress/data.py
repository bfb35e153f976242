"""Data: find GLUE (a GLUE-layout folder or the hub), slice, tokenise, collate and batch.

Reading files (GLUE TSVs, a recipe's own CSV / TSV / JSON files) is `compress.data_files`.
An example is `{"text": str, "text_pair": str | None, "label": int | float}`; a tokenised
example is `{"input_ids": [...], "token_type_ids": [...] (if the tokenizer makes them),
"label": ...}`. Class labels are integers in `TaskSpec.labels` order, which is the hub's
order, so a GLUE folder and `nyu-mll/glue` give identical examples.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from compress.data_files import make_example, read_glue_tsv, require_columns, require_file
from compress.errors import UserError
from compress.paths import user_path
from compress.tasks import HUB_LABEL_COLUMN, TaskSpec

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


# ---------------------------------------------------------------- batching


def collate(features: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example: input_ids, attention_mask, token_type_ids (if
    present), labels (long; float32 for regression)."""
    if not features:
        raise ValueError("cannot collate an empty batch")
    batch, longest = len(features), max(len(f["input_ids"]) for f in features)
    input_ids = np.full((batch, longest), pad_token_id, dtype=np.int64)  # (B, T)
    attention_mask = np.zeros((batch, longest), dtype=np.int64)  # (B, T)
    with_types = "token_type_ids" in features[0]
    token_type_ids = np.zeros((batch, longest), dtype=np.int64)  # (B, T)
    for i, feature in enumerate(features):
        n = len(feature["input_ids"])
        input_ids[i, :n] = feature["input_ids"]
        attention_mask[i, :n] = 1
        if with_types:
            token_type_ids[i, :n] = feature["token_type_ids"]
    regression = isinstance(features[0]["label"], float)
    out = {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
    }
    if with_types:
        out["token_type_ids"] = torch.from_numpy(token_type_ids)
    labels = [f["label"] for f in features]
    out["labels"] = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)  # (B,)
    return out


class LengthGroupedBatches:
    """Batches of indices with similar lengths, for `DataLoader(batch_sampler=...)`.

    shuffle=True: per epoch (see set_epoch), shuffle all indices, cut them into mega-batches
    of batch_size * group_size_multiplier, sort each by length (longest first), cut into
    batches and shuffle the batch order: little padding, still random. shuffle=False: all
    indices sorted by length, longest first (fast evaluation; batch order is not data order).
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        shuffle: bool,
        seed: int,
        group_size_multiplier: int = 50,
    ) -> None:
        if batch_size < 1 or group_size_multiplier < 1:
            raise ValueError("batch_size and group_size_multiplier must be positive")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.group_size_multiplier = group_size_multiplier
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration gives (as DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def _cut(self, indices: np.ndarray) -> list[list[int]]:
        longest_first = indices[np.argsort(-self.lengths[indices], kind="stable")]
        size = self.batch_size
        return [longest_first[i : i + size].tolist() for i in range(0, len(indices), size)]

    def _batches(self) -> list[list[int]]:
        if not self.shuffle:
            return self._cut(np.arange(len(self.lengths)))
        rng = np.random.default_rng((self.seed, self.epoch))
        permutation = rng.permutation(len(self.lengths))
        group = self.batch_size * self.group_size_multiplier
        batches = []
        for start in range(0, len(permutation), group):
            batches.extend(self._cut(permutation[start : start + group]))
        return [batches[i] for i in rng.permutation(len(batches))]


def make_loader(
    tokenized: list[dict], batch_size: int, pad_token_id: int, shuffle: bool, seed: int
) -> DataLoader:
    """DataLoader over tokenised examples with length-grouped batches and dynamic padding.

    Call `loader.batch_sampler.set_epoch(n)` before each training epoch.
    """
    sampler = LengthGroupedBatches([len(f["input_ids"]) for f in tokenized], batch_size, shuffle, seed)
    return DataLoader(
        tokenized,
        batch_sampler=sampler,
        collate_fn=partial(collate, pad_token_id=pad_token_id),
        num_workers=0,
    )
