"""A recipe's data, ready for training: task spec, tokenised splits and loaders.

Tokenised once per process: the stages of a run that read the same data with the same tokenizer
share it (`prepare_data` keeps the last two data sets, keyed by the data settings, the files'
contents and the tokenizer's full definition).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass

from torch.utils.data import DataLoader

from compress.data.batching import make_loader
from compress.data.files import load_files
from compress.data.sources import (
    HUB_ID,
    filter_by_length,
    glue_files,
    load_glue,
    resolve_data_dir,
    slice_examples,
    tokenize,
)
from compress.data.tasks import TaskSpec, get_task
from compress.errors import UserError
from compress.fingerprint import data_identity
from compress.recipe import Recipe

log = logging.getLogger(__name__)
MIN_TRAIN_EXAMPLES = 8  # fewer trains on noise: warned, not refused (tests train on tiny slices)
KEPT_DATA_SETS = 2  # tokenised data sets kept in this process (a run's train + dev, and dev alone)
_tokenised: OrderedDict[str, TaskData] = OrderedDict()


@dataclass
class TaskData:
    task: TaskSpec
    train: list[dict]  # tokenised; empty when only evaluation was asked for
    evals: dict[str, list[dict]]  # split name -> tokenised; the first is the main split
    pad_token_id: int
    seed: int

    def train_loader(self, batch_size: int) -> DataLoader:
        return make_loader(self.train, batch_size, self.pad_token_id, shuffle=True, seed=self.seed)

    def eval_loaders(self, batch_size: int) -> dict[str, DataLoader]:
        return {
            split: make_loader(rows, batch_size, self.pad_token_id, shuffle=False, seed=self.seed)
            for split, rows in self.evals.items()
        }


def custom_task(recipe: Recipe, labels: tuple[str, ...] | None) -> TaskSpec:
    """A TaskSpec for `task: custom` files."""
    cfg = recipe.data
    metric = cfg.metric or ("pearson" if cfg.regression else "accuracy")
    texts = (cfg.text_column, *([cfg.text_pair_column] if cfg.text_pair_column else []))
    return TaskSpec(
        name="custom",
        glue_dir="",
        text_columns=texts,
        label_column=cfg.label_column,
        labels=labels,
        train_file=cfg.train_file or "",
        eval_files={"validation": cfg.eval_file},
        hub_config="",
        hub_text_columns=texts,
        hub_eval_splits={},
        metrics=(metric,),
        main_metric=metric,
    )


def load_examples(recipe: Recipe, need_train: bool) -> tuple[TaskSpec, dict[str, list[dict]]]:
    """Raw examples of every split the run needs (train only if `need_train`)."""
    cfg = recipe.data
    if recipe.task == "custom":
        if need_train and not cfg.train_file:
            raise UserError("data.train_file: task 'custom' with a training stage needs a train file")
        splits, labels = load_files(
            cfg.train_file if need_train else None,
            cfg.eval_file,
            cfg.text_column,
            cfg.text_pair_column,
            cfg.label_column,
            cfg.labels,
            cfg.regression,
        )
        return custom_task(recipe, labels), splits
    task = get_task(recipe.task)
    return task, load_glue(task, resolve_data_dir(cfg.dir), need_train=need_train)


def _data_sources(recipe: Recipe, task: TaskSpec) -> dict[str, str]:
    """Where each split comes from, for messages: a file, or the hub dataset's config/split."""
    if recipe.task == "custom":
        return {"train": str(recipe.data.train_file), "validation": str(recipe.data.eval_file)}
    data_dir = resolve_data_dir(recipe.data.dir)
    if data_dir is None:
        hub_splits = {"train": "train", **task.hub_eval_splits}
        return {split: f"{HUB_ID} {task.hub_config}/{hub}" for split, hub in hub_splits.items()}
    return {split: str(path) for split, path in glue_files(task, data_dir).items()}


def _check_train_set(task: TaskSpec, train: list[dict], source: str, total: int) -> None:
    """Refuse a classification training set of fewer than 2 classes; warn when it is tiny.

    `total`: the examples in the split before slicing and length filtering.
    """
    if len(train) < MIN_TRAIN_EXAMPLES:
        log.warning("%s: only %d training examples, too few to train on meaningfully", source, len(train))
    classes = {f["label"] for f in train}
    if task.is_regression or len(classes) > 1:
        return
    kept = (
        ""
        if len(train) == total
        else f" ({len(train)} of {total} kept by data.max_train_samples/train_length)"
    )
    raise UserError(
        f"{source}{kept}: every training example is of class {task.labels[classes.pop()]!r};"
        " a classifier needs at least 2 classes"
    )


def prepare_data(recipe: Recipe, tokenizer, need_train: bool = True) -> TaskData:
    """Load, slice (seeded), tokenise and length-filter the recipe's data, or reuse what an earlier
    call in this process made of the same files, settings and tokenizer (read-only: shared)."""
    key = _data_key(recipe, tokenizer, need_train)
    if key in _tokenised:
        _tokenised.move_to_end(key)
        log.info("%s: the data tokenised earlier in this process", recipe.task)
        return _tokenised[key]
    prepared = _prepare(recipe, tokenizer, need_train)
    if key is not None:
        _tokenised[key] = prepared
        while len(_tokenised) > KEPT_DATA_SETS:
            _tokenised.popitem(last=False)
    return prepared


def _data_key(recipe: Recipe, tokenizer, need_train: bool) -> str | None:
    """What the tokenised data depends on; None (nothing reused) for a tokenizer without a
    serialisable definition (a slow one) or a data file that is not there."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        files = data_identity(recipe, need_train)
    except UserError:
        return None  # a missing file: loading it says so, in its own words
    parts = [
        recipe.model_dump_json(include={"task", "seed", "data"}),
        need_train,
        files,
        type(tokenizer).__name__,
        hashlib.sha256(backend.to_str().encode()).hexdigest(),
    ]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _prepare(recipe: Recipe, tokenizer, need_train: bool) -> TaskData:
    cfg = recipe.data
    task, splits = load_examples(recipe, need_train)
    sources = _data_sources(recipe, task)
    train = []
    if need_train:
        rows = splits.pop("train")
        examples = slice_examples(
            rows, cfg.max_train_samples, recipe.seed, f"train split ({sources['train']})"
        )
        train = filter_by_length(tokenize(examples, tokenizer, cfg.max_seq_length), cfg.train_length)
        if not train:
            raise UserError(
                f"data.train_length: no training example in {sources['train']} has {cfg.train_length} tokens"
            )
        _check_train_set(task, train, sources["train"], len(rows))
    splits.pop("train", None)
    evals = {}
    for split, rows in splits.items():
        examples = slice_examples(
            rows, cfg.max_eval_samples, recipe.seed, f"{split} split ({sources[split]})"
        )
        tokenized = filter_by_length(tokenize(examples, tokenizer, cfg.max_seq_length), cfg.eval_length)
        if not tokenized:
            raise UserError(
                f"data.eval_length: no {split} example in {sources[split]} has {cfg.eval_length} tokens"
            )
        evals[split] = tokenized
    log.info("%s: %d train, %s eval examples", task.name, len(train), {s: len(v) for s, v in evals.items()})
    return TaskData(task, train, evals, tokenizer.pad_token_id, recipe.seed)
