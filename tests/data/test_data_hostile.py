"""Hostile data files: every malformed input is one line naming the file (and line), never a traceback."""

import json
from pathlib import Path

import pytest
import yaml

import cli
from compress.data.files import load_files
from compress.data.sources import load_glue
from compress.data.task_data import prepare_data
from compress.data.tasks import get_task
from compress.errors import UserError
from compress.recipe import parse_recipe


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def _jsonl(path: Path, labels: list) -> Path:
    return _write(
        path, "".join(json.dumps({"text": f"t{i}", "label": y}) + "\n" for i, y in enumerate(labels))
    )


def _load(eval_file: Path, train_file: Path | None = None, labels=None, regression=False):
    return load_files(
        None if train_file is None else str(train_file),
        str(eval_file),
        "text",
        None,
        "label",
        labels,
        regression,
    )


def _error(call, *args, **kwargs) -> str:
    """The message of the UserError `call` raises; it must be one line."""
    with pytest.raises(UserError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _labels(splits: dict, split: str) -> list:
    return [e["label"] for e in splits[split]]


# ---------------------------------------------------------------- labels


def test_one_class_in_many_spellings(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [1, "1", 1.0, " 1.0 ", 0, "0", 0.0, "+0"])
    splits, labels = _load(train, train)
    assert labels == ("0", "1")
    assert _labels(splits, "train") == [1, 1, 1, 1, 0, 0, 0, 0]


def test_numbers_sort_numerically_and_names_alphabetically(tmp_path):
    numbers = _jsonl(tmp_path / "numbers.jsonl", ["10", 2, "0.5", 2.0])
    assert _load(numbers)[1] == ("0.5", "2", "10")
    names = _jsonl(tmp_path / "names.jsonl", ["pos", "neg", "nan"])  # "nan" is a name, not a number
    assert _load(names)[1] == ("nan", "neg", "pos")


@pytest.mark.parametrize(
    "bad, shown",
    [(True, "label true"), (None, "label null"), ([1], "label [1]"), ("  ", "label is empty")],
)
def test_bool_null_nested_or_empty_label_names_file_and_line(tmp_path, bad, shown):
    train = _jsonl(tmp_path / "train.jsonl", [0, 1, bad])
    message = _error(_load, train, train)
    assert "train.jsonl" in message and "line 3" in message and shown in message


def test_numbers_and_names_mixed(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [1, 0, "pos", 1])
    message = _error(_load, train, train)
    assert "train.jsonl': line 3: label 'pos' is a name but '1' (line 1) is not" in message


def test_unknown_dev_label_names_dev_file_and_line(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [0, 1])
    dev = _jsonl(tmp_path / "dev.jsonl", ["1.0", 2])
    message = _error(_load, dev, train)
    assert "dev.jsonl': line 2: unknown label '2'" in message and "train.jsonl" in message
    message = _error(_load, dev, train, labels=["0", "1"])
    assert "dev.jsonl': line 2" in message and "data.labels" in message


def test_declared_labels_are_normalised_and_checked(tmp_path):
    dev = _jsonl(tmp_path / "dev.jsonl", [1.0, "0"])
    splits, labels = _load(dev, labels=["0.0", "1"])
    assert labels == ("0", "1") and _labels(splits, "validation") == [1, 0]
    assert "'1' and '1.0' name the same class" in _error(_load, dev, labels=["1", "1.0"])
    assert "data.labels: a classifier needs at least 2 classes" in _error(_load, dev, labels=["1"])


@pytest.mark.parametrize("bad", [True, None, "nan", "high"])
def test_regression_score_must_be_a_finite_number(tmp_path, bad):
    dev = _jsonl(tmp_path / "dev.jsonl", [0.5, bad])
    message = _error(_load, dev, regression=True)
    assert "dev.jsonl': line 2: score" in message and "not a number" in message


def test_glue_label_spellings_are_one_class(tmp_path):
    _write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\na\t1.0\nb\t0\n")
    _write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\nc\t1\n")
    splits = load_glue(get_task("sst2"), tmp_path)
    assert _labels(splits, "train") == [1, 0] and _labels(splits, "validation") == [1]


# ---------------------------------------------------------------- one class, too few examples


def test_a_train_file_of_one_class_is_refused(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [1])
    message = _error(_load, train, train)
    assert "train.jsonl" in message and "at least 2 classes" in message


def _raw_recipe(model: Path, task: str = "custom", **data) -> dict:
    stages = [{"name": "finetune", "kind": "finetune", "epochs": 1}]
    return {"name": "hostile", "model": str(model), "task": task, "data": data, "stages": stages}


def _recipe(model: Path, task: str = "custom", **data):
    return parse_recipe(_raw_recipe(model, task, max_seq_length=16, **data), "hostile")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_a_train_slice_of_one_class_is_refused(tmp_path, tiny_model_dir, tokenizer):
    train = _jsonl(tmp_path / "train.jsonl", [0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    recipe = _recipe(tiny_model_dir, train_file=str(train), eval_file=str(train), max_train_samples=3)
    message = _error(prepare_data, recipe, tokenizer)
    assert str(train) in message and "3 of 10 kept by data.max_train_samples" in message
    assert "class '0'" in message


def test_a_one_class_glue_train_file_is_refused(tmp_path, tiny_model_dir, tokenizer):
    _write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\na\t1\nb\t1\n")
    _write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\nc\t1\n")
    recipe = _recipe(tiny_model_dir, "sst2", dir=str(tmp_path))
    message = _error(prepare_data, recipe, tokenizer)
    assert "SST-2/train.tsv" in message and "every training example is of class '1'" in message


def test_a_tiny_train_set_is_warned_about(tmp_path, tiny_model_dir, tokenizer, caplog):
    train = _jsonl(tmp_path / "train.jsonl", [0, 1, 0])
    recipe = _recipe(tiny_model_dir, train_file=str(train), eval_file=str(train))
    with caplog.at_level("WARNING", logger="compress.data.task_data"):
        assert len(prepare_data(recipe, tokenizer).train) == 3
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "compress.data.task_data" and r.levelname == "WARNING"
    ]
    assert warnings == [f"{train}: only 3 training examples, too few to train on meaningfully"]


# ---------------------------------------------------------------- CSV / TSV


def test_a_csv_field_over_128_kib_loads(tmp_path):
    long = "word " * 40_000  # 200 KB, over csv's default field limit
    dev = _write(tmp_path / "dev.csv", f'text,label\n"{long}",0\nshort,1\n')
    assert _load(dev)[0]["validation"][0]["text"] == long


def test_a_csv_field_over_16_mib_names_file_and_line(tmp_path):
    dev = _write(tmp_path / "dev.csv", 'text,label\nshort,1\n"' + "x" * (17 * 2**20) + '",0\n')
    message = _error(_load, dev)
    assert "dev.csv': line 3" in message and "field larger than field limit" in message


@pytest.mark.parametrize(
    "name, text, line",
    [
        ("dev.csv", "text,label\nok,0\ncaf\xe9,1\n", 3),
        ("dev.jsonl", '{"text": "ok", "label": 0}\n{"text": "caf\xe9", "label": 1}\n', 2),
    ],
)
def test_latin1_file_names_file_line_and_utf8(tmp_path, name, text, line):
    message = _error(_load, _write(tmp_path / name, text.encode("latin-1")))
    assert f"{name}': line {line} (byte" in message and "UTF-8" in message


def test_latin1_glue_file(tmp_path):
    _write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\nna\xefve\t1\n".encode("latin-1"))
    message = _error(load_glue, get_task("sst2"), tmp_path)
    assert "SST-2/train.tsv': line 2" in message and "UTF-8" in message


def test_a_utf8_bom_is_dropped(tmp_path):
    dev = _write(tmp_path / "dev.csv", "\ufefftext,label\na,0\nb,1\n")
    assert _load(dev)[1] == ("0", "1")


@pytest.mark.parametrize(
    "name, text, fragments",
    [
        ("dev.tsv", "text\tlabel\na\t0\nb\n", ["dev.tsv': line 3: 1 fields, the header has 2"]),
        ("dev.csv", "text,label\na,0,extra\n", ["dev.csv': line 2: 3 fields"]),
        ("dev.csv", "", ["dev.csv': line 1: no header"]),
        ("dev.csv", "\ntext,label\na,0\n", ["dev.csv': line 1: no header"]),
        ("dev.csv", "text,label\n", ["dev.csv' holds no examples"]),
        ("dev.csv", "text,text,label\na,b,0\n", ["line 1: column 'text' appears twice"]),
        ("dev.csv", "text,lab\na,0\nb,1\n", ["dev.csv': missing column 'label'"]),
        ("dev.csv", "text,label\na,\n", ["dev.csv': line 2: label is empty"]),
    ],
)
def test_malformed_delimited_files(tmp_path, name, text, fragments):
    message = _error(_load, _write(tmp_path / name, text))
    for fragment in fragments:
        assert fragment in message


def test_glue_file_of_only_malformed_rows(tmp_path):
    _write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\na,0\nb,1\n")
    assert "SST-2/train.tsv' holds no examples" in _error(load_glue, get_task("sst2"), tmp_path)


# ---------------------------------------------------------------- JSON


@pytest.mark.parametrize(
    "name, text, fragment",
    [
        ("dev.json", "5", "dev.json': line 1: a record must be a JSON object, got 5"),
        ("dev.json", '{\n "text": "a",\n "label": 0\n}\n', "dev.json': line 1: invalid JSON"),
        (
            "dev.json",
            '[{"text": "a", "label": 0},\n "b"]',
            "dev.json': record 2: a record must be a JSON object",
        ),
        ("dev.json", '[{"text": "a", "label": 0},\n', "dev.json': line 2: invalid JSON"),
        ("dev.json", "[" * 100_000, "dev.json': line 1: unreadable JSON ('maximum recursion depth"),
        (
            "dev.jsonl",
            '{"text": "a", "label": ' + "1" * 5000 + "}",
            "dev.jsonl': line 1: unreadable JSON ('Exceeds",
        ),
        ("dev.json", "[]", "dev.json' holds no examples"),
        ("dev.jsonl", "", "dev.jsonl' holds no examples"),
        (
            "dev.jsonl",
            '{"text": "a", "label": 0}\n\n{"text": "b", "label": 1\n',
            "dev.jsonl': line 3: invalid JSON",
        ),
        (
            "dev.jsonl",
            '{"text": "a", "label": 0}\n{"label": 1}\n',
            "dev.jsonl': line 2: missing column 'text'",
        ),
        (
            "dev.jsonl",
            '{"text": "a", "label": 1}\n{"text": null, "label": 0}\n',
            "dev.jsonl': line 2: column 'text' is null, not text",
        ),
        (
            "dev.jsonl",
            '{"text": "a", "label": 1}\n{"text": {"a": 1}, "label": 0}\n',
            "dev.jsonl': line 2: column 'text' is {'a': 1}, not text",
        ),
    ],
)
def test_malformed_json_files(tmp_path, name, text, fragment):
    assert fragment in _error(_load, _write(tmp_path / name, text))


def test_json_strings_may_hold_line_separators(tmp_path):
    dev = _write(tmp_path / "dev.jsonl", '{"text": "a\u2028b", "label": 0}\n{"text": "c", "label": 1}\n')
    assert _load(dev)[0]["validation"][0]["text"] == "a\u2028b"


# ---------------------------------------------------------------- folders given as files


def test_a_folder_given_as_a_data_file(tmp_path):
    (tmp_path / "dev.csv").mkdir()
    assert "dev.csv' is a folder, not a file" in _error(_load, tmp_path / "dev.csv")
    (tmp_path / "SST-2" / "train.tsv").mkdir(parents=True)
    message = _error(load_glue, get_task("sst2"), tmp_path)
    assert "task sst2 (train split)" in message and "is a folder" in message
    assert "'/dev/null' is not a regular file" in _error(_load, Path("/dev/null"))


# ---------------------------------------------------------------- end to end through the CLI


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GLUE_DIR", raising=False)
    return tmp_path


def _recipe_file(folder: Path, model: Path, task: str = "custom", **data) -> Path:
    return _write(folder / "recipe.yaml", yaml.safe_dump(_raw_recipe(model, task, **data)))


def _assert_one_error_line(capsys, code: int, *fragments: str) -> None:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in errors[0]


def test_validate_a_folder_given_as_the_train_file(workdir, tiny_model_dir, capsys):
    (workdir / "train.csv").mkdir()
    dev = _write(workdir / "dev.csv", "text,label\na,0\nb,1\n")
    recipe = _recipe_file(workdir, tiny_model_dir, train_file="train.csv", eval_file=str(dev))
    _assert_one_error_line(capsys, cli.main(["validate", str(recipe)]), "'train.csv' is a folder, not a file")


@pytest.mark.parametrize(
    "train, fragments",
    [
        ("text,label\ncaf\xe9,0\nb,1\n".encode("latin-1"), ["train.csv': line 2", "UTF-8"]),
        ('text,label\na,1\nb,"1.0"\n', ["train.csv", "every label is '1'"]),
        ("text,label\na,0\nb\n", ["train.csv': line 3: 1 fields"]),
    ],
)
def test_compress_refuses_a_hostile_train_file_before_training(
    workdir, tiny_model_dir, capsys, train, fragments
):
    _write(workdir / "train.csv", train)
    _write(workdir / "dev.csv", "text,label\na,0\nb,1\n")
    recipe = _recipe_file(workdir, tiny_model_dir, train_file="train.csv", eval_file="dev.csv")
    _assert_one_error_line(capsys, cli.main(["compress", str(recipe)]), *fragments)
    assert sorted(p.name for p in workdir.iterdir()) == ["dev.csv", "recipe.yaml", "train.csv"]


def test_compress_refuses_a_hostile_glue_folder(workdir, tiny_model_dir, capsys):
    glue = workdir / "glue"
    _write(glue / "SST-2" / "train.tsv", "sentence\tlabel\na\t0\nb\ttrue\n")
    _write(glue / "SST-2" / "dev.tsv", "sentence\tlabel\nc\t1\n")
    recipe = _recipe_file(workdir, tiny_model_dir, "sst2")
    code = cli.main(["compress", str(recipe), "--data-dir", str(glue)])
    _assert_one_error_line(capsys, code, "SST-2/train.tsv': line 3: unknown label 'true'")
