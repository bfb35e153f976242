"""A recipe's data, ready for training: task spec, tokenised splits and loaders."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch.utils.data import DataLoader

from compress import data
from compress.errors import UserError
from compress.recipe import Recipe
from compress.tasks import TaskSpec, get_task

log = logging.getLogger(__name__)


@dataclass
class TaskData:
    task: TaskSpec
    train: list[dict]  # tokenised; empty when only evaluation was asked for
    evals: dict[str, list[dict]]  # split name -> tokenised; the first is the main split
    pad_token_id: int
    seed: int

    def train_loader(self, batch_size: int) -> DataLoader:
        return data.make_loader(self.train, batch_size, self.pad_token_id, shuffle=True, seed=self.seed)

    def eval_loaders(self, batch_size: int) -> dict[str, DataLoader]:
        return {
            split: data.make_loader(rows, batch_size, self.pad_token_id, shuffle=False, seed=self.seed)
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
        splits, labels = data.load_files(
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
    return task, data.load_glue(task, data.resolve_data_dir(cfg.dir), need_train=need_train)


def prepare_data(recipe: Recipe, tokenizer, need_train: bool = True) -> TaskData:
    """Load, slice (seeded), tokenise and length-filter the recipe's data."""
    cfg = recipe.data
    task, splits = load_examples(recipe, need_train)
    train = []
    if need_train:
        examples = data.slice_examples(splits.pop("train"), cfg.max_train_samples, recipe.seed, "train")
        train = data.filter_by_length(
            data.tokenize(examples, tokenizer, cfg.max_seq_length), cfg.train_length
        )
        if not train:
            raise UserError(f"data.train_length: no training example has {cfg.train_length} tokens")
    splits.pop("train", None)
    evals = {}
    for split, rows in splits.items():
        examples = data.slice_examples(rows, cfg.max_eval_samples, recipe.seed, split)
        tokenized = data.filter_by_length(
            data.tokenize(examples, tokenizer, cfg.max_seq_length), cfg.eval_length
        )
        if not tokenized:
            raise UserError(f"data.eval_length: no {split} example has {cfg.eval_length} tokens")
        evals[split] = tokenized
    log.info("%s: %d train, %s eval examples", task.name, len(train), {s: len(v) for s, v in evals.items()})
    return TaskData(task, train, evals, tokenizer.pad_token_id, recipe.seed)
