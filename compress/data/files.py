"""Data files: read GLUE TSV files and custom CSV / TSV / JSON(-lines) files into examples.

Every check (encoding, header, columns, labels) fails with one message naming the file and line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compress.data.tasks import TaskSpec
from compress.errors import UserError
from compress.user_input import quote

logger = logging.getLogger(__name__)

_MAX_FIELD_CHARS = 16 * 2**20  # csv's default field limit (128 KiB) is shorter than some documents
_NAMES_SHOWN = 10  # columns or labels listed in a message

Row = tuple[str, dict[str, Any]]  # (where in the file: "line 3" or "record 3", column -> value)


# ---------------------------------------------------------------- GLUE files


def read_glue_tsv(task: TaskSpec, path: Path) -> list[dict]:
    """A GLUE TSV file's examples, labels in `task.labels` order; malformed rows skipped."""
    rows, header = _read_delimited(path, "\t", csv.QUOTE_NONE, task.tsv_header, skip_malformed=True)
    needed = (*task.text_columns, task.label_column)
    require_columns(f"task {task.name}: data file {str(path)!r}", header, needed)
    index = None if task.labels is None else {s: i for i, s in enumerate(task.labels)}
    origin = f"task {task.name}'s labels"
    examples = []
    for where, row in rows:
        texts = [row[c] for c in task.text_columns]
        label = _parse_label(row[task.label_column], index, _at(path, where), origin)
        examples.append(make_example(texts, label))
    return examples


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
            make_example(
                [_text(row, c, _at(paths[split], where)) for c in columns[:-1]],
                _parse_label(row[label_column], index, _at(paths[split], where), origin),
            )
            for where, row in rows
        ]
    return splits, label_set


def _read_records(path: Path, columns: Sequence[str]) -> list[Row]:
    require_file(path, "data file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        delimiter, quoting = ("\t", csv.QUOTE_NONE) if suffix == ".tsv" else (",", csv.QUOTE_MINIMAL)
        rows, header = _read_delimited(path, delimiter, quoting, None, skip_malformed=False)
        require_columns(f"data file {str(path)!r}", header, columns)
    elif suffix in (".json", ".jsonl"):
        rows = _read_json(path)
        for where, row in rows:
            require_columns(_at(path, where), list(row), columns)
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


def require_file(path: Path, prefix: str) -> None:
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


def require_columns(where: str, available: Sequence[str], needed: Sequence[str]) -> None:
    """Each `needed` column among `available`; `where` starts the message."""
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


def make_example(texts: Sequence[str], label: int | float) -> dict:
    """An example (see `compress.data.sources`) from one or two texts and a label."""
    return {"text": texts[0], "text_pair": texts[1] if len(texts) > 1 else None, "label": label}
