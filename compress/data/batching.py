"""Batching: length-grouped batches of tokenised examples, padded per batch (dynamic padding).

A tokenised example is `{"input_ids": [...], "token_type_ids": [...] (if the tokenizer makes them),
"label": ...}` (`compress.data.sources.tokenize`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader


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
