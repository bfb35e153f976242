"""Data: load GLUE (local GLUE-layout folder or the hub) and custom files, slice, tokenise,
collate and batch.

An example is `{"text": str, "text_pair": str | None, "label": int | float}`; a tokenised
example is `{"input_ids": [...], "token_type_ids": [...] (if the tokenizer makes them),
"label": ...}`. Class labels are integers in `TaskSpec.labels` order, which is the hub's
order, so a GLUE folder and `nyu-mll/glue` give identical examples.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from compress.errors import UserError
from compress.paths import user_path
from compress.tasks import HUB_LABEL_COLUMN, TaskSpec
from compress.user_input import quote

logger = logging.getLogger(__name__)

HUB_ID = "nyu-mll/glue"
_TOKENIZE_CHUNK = 2048  # examples per fast-tokenizer call: fast, bounded memory
_MAX_FIELD_CHARS = 16 * 2**20  # csv's default field limit (128 KiB) is shorter than some documents
_NAMES_SHOWN = 10  # columns or labels listed in a message

Row = tuple[str, dict[str, Any]]  # (where in the file: "line 3" or "record 3", column -> value)


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
    files = {"train": task.train_file} if need_train else {}
    files.update(task.eval_files)
    splits = {}
    for split, name in files.items():
        path = Path(data_dir) / task.glue_dir / name
        _require_file(path, f"task {task.name} ({split} split): data file")
        splits[split] = _read_glue_tsv(task, path)
    return splits


def _read_glue_tsv(task: TaskSpec, path: Path) -> list[dict]:
    rows, header = _read_delimited(path, "\t", csv.QUOTE_NONE, task.tsv_header, skip_malformed=True)
    needed = (*task.text_columns, task.label_column)
    _require_columns(f"task {task.name}: data file {str(path)!r}", header, needed)
    index = None if task.labels is None else {s: i for i, s in enumerate(task.labels)}
    origin = f"task {task.name}'s labels"
    examples = []
    for where, row in rows:
        texts = [row[c] for c in task.text_columns]
        label = _parse_label(row[task.label_column], index, _at(path, where), origin)
        examples.append(_example(texts, label))
    return examples


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
        _require_columns(where, table.column_names, (*task.hub_text_columns, HUB_LABEL_COLUMN))
        columns = table[:]  # column -> list, in one go
        cast = float if task.is_regression else int
        labels = [cast(v) for v in columns[HUB_LABEL_COLUMN]]
        texts = list(zip(*(columns[c] for c in task.hub_text_columns), strict=True))
        splits[ours] = [_example(t, y) for t, y in zip(texts, labels, strict=True) if y != -1]
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


# ---------------------------------------------------------------- custom files


def load_files(
    train_file: str | None,
    eval_file: str,
    text_column: str,
    text_pair_column: str | None,
    label_column: str,
    labels: list[str] | None,
    regression: bool,
) -> tuple[dict[str, list[dict]], tuple[str, ...] | None]:
    """Load a recipe's own CSV / TSV / JSON(-lines) files with a column mapping.

    Returns ({"train": [...], "validation": [...]}, label tuple or None for regression).
    Labels are compared in one spelling (see `_class_key`: 1, 1.0 and "1" are one class).
    Without `labels`, the label set is the train (else eval) file's distinct labels, sorted
    numerically when they are all numbers, else alphabetically.
    """
    paths = {s: Path(p) for s, p in (("train", train_file), ("validation", eval_file)) if p is not None}
    columns = (text_column, *([text_pair_column] if text_pair_column else []), label_column)
    raw = {split: _read_records(path, columns) for split, path in paths.items()}
    label_set, origin = None, ""
    if not regression and labels is not None:
        label_set, origin = _declared_labels(labels), "data.labels"
    elif not regression:
        split = "train" if "train" in raw else "validation"
        label_set = _infer_labels(paths[split], raw[split], label_column)
        origin = f"the labels of {str(paths[split])!r}"
    index = None if label_set is None else {s: i for i, s in enumerate(label_set)}
    splits = {}
    for split, rows in raw.items():
        splits[split] = [
            _example(
                [_text(row, c, _at(paths[split], where)) for c in columns[:-1]],
                _parse_label(row[label_column], index, _at(paths[split], where), origin),
            )
            for where, row in rows
        ]
    return splits, label_set


def _read_records(path: Path, columns: Sequence[str]) -> list[Row]:
    _require_file(path, "data file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        delimiter, quoting = ("\t", csv.QUOTE_NONE) if suffix == ".tsv" else (",", csv.QUOTE_MINIMAL)
        rows, header = _read_delimited(path, delimiter, quoting, None, skip_malformed=False)
        _require_columns(f"data file {str(path)!r}", header, columns)
    elif suffix in (".json", ".jsonl"):
        rows = _read_json(path)
        for where, row in rows:
            _require_columns(_at(path, where), list(row), columns)
    else:
        raise UserError(f"data file {str(path)!r}: unsupported extension; use .csv, .tsv, .json or .jsonl")
    return rows


def _read_json(path: Path) -> list[Row]:
    """Records of one JSON array (`[{...}, ...]`) or of JSON lines (one object a line)."""
    text = _read_text(path)
    if text.lstrip().startswith("["):
        rows = [(f"record {n}", r) for n, r in enumerate(_parse_json(path, text, None), start=1)]
    else:  # "\n" only: a JSON string may hold U+2028, which str.splitlines would split on
        lines = enumerate(text.split("\n"), start=1)
        rows = [(f"line {n}", _parse_json(path, s, n)) for n, s in lines if s.strip()]
    for where, row in rows:
        if not isinstance(row, dict):
            raise UserError(f"{_at(path, where)}: a record must be a JSON object, got {_show(row)}")
    _require_rows(path, rows)
    return rows


def _parse_json(path: Path, text: str, line: int | None) -> Any:
    """`text` parsed; `line`: where it starts in the file (None: it is the whole file)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{_at(path, f'line {line or e.lineno}')}: invalid JSON ({e.msg}); expected an array"
            " of objects, or one object a line"
        ) from None
    except (RecursionError, ValueError) as e:  # nested too deeply; an integer past 4300 digits
        raise UserError(f"{_at(path, f'line {line or 1}')}: unreadable JSON ({quote(str(e), 60)})") from None


def _declared_labels(labels: list[str]) -> tuple[str, ...]:
    keys: dict[str, str] = {}  # class key -> the declared label
    for label in labels:
        key = _class_key(label, "data.labels")
        if key in keys:
            raise UserError(f"data.labels: {quote(keys[key])} and {quote(label)} name the same class")
        keys[key] = label
    if len(keys) < 2:
        raise UserError(f"data.labels: a classifier needs at least 2 classes, got {len(keys)}")
    return tuple(keys)


def _infer_labels(path: Path, rows: list[Row], column: str) -> tuple[str, ...]:
    """A file's distinct labels: numbers in numeric order, else names in alphabetical order.

    All numbers or all names: a mix (1, "one") is refused at the first label of the second kind.
    """
    first: dict[bool, tuple[str, str]] = {}  # is a number -> (where, key) of its first label
    keys = set()
    for where, row in rows:
        key = _class_key(row[column], _at(path, where))
        first.setdefault(_number(key) is not None, (where, key))
        keys.add(key)
    if len(first) > 1:
        (where, key), (offender, odd) = first.values()
        kind = "a number" if _number(odd) is not None else "a name"
        raise UserError(
            f"{_at(path, offender)}: label {quote(odd)} is {kind} but {quote(key)} ({where}) is not;"
            " labels must be all numbers or all names"
        )
    if len(keys) < 2:
        raise UserError(
            f"data file {str(path)!r}: every label is {quote(keys.pop())}; a classifier needs at least"
            " 2 classes (data.labels can declare classes the file lacks)"
        )
    return tuple(sorted(keys, key=float) if True in first else sorted(keys))


def _text(row: dict, column: str, where: str) -> str:
    value = row[column]
    if value is None or isinstance(value, list | dict):
        raise UserError(f"{where}: column {column!r} is {_show(value)}, not text")
    return str(value)


# ---------------------------------------------------------------- shared reading helpers


def _at(path: Path, where: str) -> str:
    """A place for messages: `data file '<path>': line 3`."""
    return f"data file {str(path)!r}: {where}"


def _require_file(path: Path, prefix: str) -> None:
    """A regular file: not a folder, nor a device or pipe (reading one could block)."""
    if path.is_dir():
        raise UserError(f"{prefix} {str(path)!r} is a folder, not a file")
    if not path.exists():
        raise UserError(f"{prefix} {str(path)!r} not found")
    if not path.is_file():
        raise UserError(f"{prefix} {str(path)!r} is not a regular file")


def _require_rows(path: Path, rows: list[Row]) -> None:
    if not rows:
        raise UserError(f"data file {str(path)!r} holds no examples")


def _read_text(path: Path) -> str:
    """The file's text, which must be UTF-8 (a leading BOM dropped: MRPC starts with one)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"data file {str(path)!r}: cannot read it ({e.strerror or e})") from None
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(
            f"{_at(path, f'line {line}')} (byte {e.start}): not UTF-8 ({e.reason}); save the file as UTF-8"
        ) from None


def _read_delimited(
    path: Path, delimiter: str, quoting: int, header: Sequence[str] | None, skip_malformed: bool
) -> tuple[list[Row], list[str]]:
    """Rows of a delimited file and its header (the first line unless given).

    A row whose field count differs from the header's is an error, or with skip_malformed
    skipped and counted (as the GLUE scripts do: QQP train has some).
    """
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_FIELD_CHARS))  # process-wide; only raised
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter, quoting=quoting)
    rows, skipped = [], 0
    try:
        header = list(header) if header is not None else _header(path, next(reader, None))
        for fields in reader:
            if not fields:
                continue
            where = f"line {reader.line_num}"
            if len(fields) != len(header):
                if not skip_malformed:
                    raise UserError(f"{_at(path, where)}: {len(fields)} fields, the header has {len(header)}")
                skipped += 1
                continue
            rows.append((where, dict(zip(header, fields, strict=True))))
    except csv.Error as e:
        raise UserError(f"{_at(path, f'line {reader.line_num}')}: {e}") from None
    if skipped:
        logger.warning("%s: skipped %d malformed rows (wrong number of fields)", path, skipped)
    _require_rows(path, rows)
    return rows, header


def _header(path: Path, first: list[str] | None) -> list[str]:
    if not first:
        raise UserError(f"{_at(path, 'line 1')}: no header (the column names)")
    names = [name.strip() for name in first]
    twice = [name for name, count in Counter(names).items() if count > 1]
    if twice:
        raise UserError(f"{_at(path, 'line 1')}: column {quote(twice[0])} appears twice in the header")
    return names


def _require_columns(where: str, available: Sequence[str], needed: Sequence[str]) -> None:
    for column in needed:
        if column not in available:
            raise UserError(f"{where}: missing column {column!r} (columns: {_listing(available)})")


def _parse_label(value: Any, index: dict[str, int] | None, where: str, origin: str) -> int | float:
    """Class id of a label (index given; `origin` names where the known labels come from),
    else a float score (regression)."""
    if index is None:
        return _score(value, where)
    key = _class_key(value, where)
    if key not in index:
        raise UserError(f"{where}: unknown label {quote(key)}, not among {origin} ({_listing(index)})")
    return index[key]


def _class_key(value: Any, where: str) -> str:
    """The one spelling of a class label: integers, integral floats and their strings are one
    label (1 == 1.0 == "1" == " 1 "); other numbers their shortest form; names stripped.

    A bool, null, empty or nested label is refused: it is a mistake, not a class.
    """
    if value is None or isinstance(value, bool | list | dict):
        raise UserError(f"{where}: label {_show(value)} is neither a class name nor a number")
    text = str(value).strip()
    if not text:
        raise UserError(f"{where}: label is empty")
    try:
        return str(int(text))  # exact, even past float precision
    except ValueError:
        number = _number(text)
    if number is None:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def _score(value: Any, where: str) -> float:
    number = None if isinstance(value, bool | list | dict) or value is None else _number(str(value))
    if number is None:
        raise UserError(f"{where}: score {_show(value)} is not a number")
    return number


def _number(text: str) -> float | None:
    """The finite number `text` spells, else None (so "nan" and "inf" are names)."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _listing(names: Sequence[str] | dict) -> str:
    """The first few names, quoted (a header may hold anything, newlines included)."""
    shown = ", ".join(quote(name, 40) for name in list(names)[:_NAMES_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _NAMES_SHOWN else "")


def _show(value: Any) -> str:
    """A value as its file spells it, short: null, true and numbers as JSON, others quoted."""
    return json.dumps(value) if value is None or isinstance(value, bool | int | float) else quote(value)


def _example(texts: Sequence[str], label: int | float) -> dict:
    return {"text": texts[0], "text_pair": texts[1] if len(texts) > 1 else None, "label": label}


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
