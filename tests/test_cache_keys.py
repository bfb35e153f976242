"""Stage cache keys hold the data files and model folders by content, not by the path they were
reached by: relative, absolute, through a link, GLUE_DIR or data.dir all give one key."""

import os
import shutil
from pathlib import Path

import pytest

from compress import fingerprint
from compress.fingerprint import data_identity, file_digest, model_identity
from compress.pipeline import plan
from compress.recipe import parse_recipe
from tests.tiny_runs import write_glue

STAGES = [
    {"name": "finetune", "kind": "finetune", "epochs": 1},
    {"name": "soft", "kind": "ltp_soft", "epochs": 1},
]


def recipe_of(model: str, data: dict | None = None, **changes):
    """A two-stage recipe; `data` adds to its data settings, `changes` replace top-level keys."""
    raw = {
        "name": "keys",
        "model": model,
        "task": "sst2",
        "seed": 0,
        "data": {"max_train_samples": 64, **(data or {})},
        "stages": STAGES,
        **changes,
    }
    return parse_recipe(raw, "test")


def keys(recipe, out: Path) -> list[str]:
    return [step.cache_key for step in plan(recipe, out)]


def flip_last_byte(path: Path) -> None:
    """One byte changed, the size kept; mtime moved on so a clock tick coarser than the filesystem's
    nanoseconds cannot hide the edit from the per-process digest cache."""
    content = bytearray(path.read_bytes())
    content[-1] ^= 1
    path.write_bytes(bytes(content))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


@pytest.fixture
def glue(tmp_path) -> Path:
    return write_glue(tmp_path / "data")


def test_the_same_glue_files_reached_any_way_give_one_key(tmp_path, glue, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(glue, target_is_directory=True)
    model = str(tiny_model_dir)
    absolute = keys(recipe_of(model, data={"dir": str(glue)}), tmp_path / "a")
    assert len(set(absolute)) == 2  # one key per stage
    assert keys(recipe_of(model, data={"dir": "data/glue"}), tmp_path / "b") == absolute
    assert keys(recipe_of(model, data={"dir": "link"}), tmp_path / "c") == absolute
    assert keys(recipe_of(model, data={"dir": "./data/../data/glue"}), tmp_path / "d") == absolute
    monkeypatch.setenv("GLUE_DIR", "link")
    assert keys(recipe_of(model), tmp_path / "e") == absolute


def test_one_byte_of_the_train_or_dev_file_changes_the_key(tmp_path, glue, tiny_model_dir):
    recipe = recipe_of(str(tiny_model_dir), data={"dir": str(glue)})
    before = keys(recipe, tmp_path / "out")
    flip_last_byte(glue / "SST-2" / "train.tsv")
    after_train = keys(recipe, tmp_path / "out")
    assert after_train[0] != before[0] and after_train[1] != before[1]
    flip_last_byte(glue / "SST-2" / "dev.tsv")
    assert keys(recipe, tmp_path / "out")[0] not in (before[0], after_train[0])


def test_files_the_task_does_not_read_do_not_count(tmp_path, glue, tiny_model_dir):
    recipe = recipe_of(str(tiny_model_dir), data={"dir": str(glue)})
    before = keys(recipe, tmp_path / "out")
    (glue / "SST-2" / "test.tsv").write_text("index\tsentence\n0\tunlabelled\n")
    (glue / "CoLA").mkdir()
    assert keys(recipe, tmp_path / "out") == before


def test_a_recipe_that_trains_nothing_does_not_read_the_train_file(tmp_path, glue, tiny_model_dir):
    recipe = recipe_of(
        str(tiny_model_dir), data={"dir": str(glue)}, stages=[{"name": "int8", "kind": "quantize"}]
    )
    before = keys(recipe, tmp_path / "out")
    (glue / "SST-2" / "train.tsv").unlink()
    assert keys(recipe, tmp_path / "out") == before


def test_other_data_settings_still_count(tmp_path, glue, tiny_model_dir):
    model = str(tiny_model_dir)
    base = keys(recipe_of(model, data={"dir": str(glue)}), tmp_path / "out")
    sliced = keys(recipe_of(model, data={"dir": str(glue), "max_train_samples": 32}), tmp_path / "out")
    seeded = keys(recipe_of(model, seed=1, data={"dir": str(glue)}), tmp_path / "out")
    assert len({base[0], sliced[0], seeded[0]}) == 3


def test_the_same_model_folder_reached_any_way_gives_one_key(tmp_path, glue, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    (tmp_path / "model-link").symlink_to(tmp_path / "model", target_is_directory=True)
    data = {"dir": str(glue)}
    absolute = keys(recipe_of(str(tmp_path / "model"), data=data), tmp_path / "out")
    assert keys(recipe_of("model", data=data), tmp_path / "out") == absolute
    assert keys(recipe_of("./model-link", data=data), tmp_path / "out") == absolute
    assert keys(recipe_of(str(tiny_model_dir), data=data), tmp_path / "out") == absolute  # a copy
    flip_last_byte(tmp_path / "model" / "model.safetensors")
    assert keys(recipe_of("model", data=data), tmp_path / "out")[0] != absolute[0]


def test_a_teacher_folder_counts_by_content(tmp_path, glue, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "teacher")
    (tmp_path / "teacher-link").symlink_to(tmp_path / "teacher", target_is_directory=True)

    def distill_keys(teacher: str) -> list[str]:
        stages = [{"name": "kd", "kind": "distill", "epochs": 1, "teacher": teacher}]
        recipe = recipe_of(str(tiny_model_dir), data={"dir": str(glue)}, stages=stages)
        return keys(recipe, tmp_path / "out")

    absolute = distill_keys(str(tmp_path / "teacher"))
    assert distill_keys("teacher") == distill_keys("teacher-link") == absolute
    flip_last_byte(tmp_path / "teacher" / "config.json")
    assert distill_keys("teacher") != absolute


def test_custom_files_count_by_content(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "files").mkdir()
    for name in ("train.csv", "dev.csv"):
        rows = [f"{word} film,{i % 2}" for i, word in enumerate(["good", "bad", "fine", "dull"] * 4)]
        (tmp_path / "files" / name).write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "link").symlink_to(tmp_path / "files", target_is_directory=True)

    def custom_keys(folder: str) -> list[str]:
        data = {"train_file": f"{folder}/train.csv", "eval_file": f"{folder}/dev.csv"}
        return keys(recipe_of(str(tiny_model_dir), task="custom", data=data), tmp_path / "out")

    absolute = custom_keys(str(tmp_path / "files"))
    assert custom_keys("files") == custom_keys("link") == absolute
    flip_last_byte(tmp_path / "files" / "train.csv")
    assert custom_keys("files") != absolute


def test_hub_names_stay_names(monkeypatch, tiny_model_dir):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    assert model_identity("minilm") == "minilm"
    assert model_identity("prajjwal1/bert-tiny") == "prajjwal1/bert-tiny"
    assert data_identity(recipe_of(str(tiny_model_dir)), need_train=True) == {"hub": "nyu-mll/glue"}


def test_a_file_is_read_once_per_process_while_unchanged(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(3 * 2**20 + 5))
    first = file_digest(path)
    before = fingerprint._file_digest.cache_info()
    assert file_digest(path) == first
    after = fingerprint._file_digest.cache_info()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)
