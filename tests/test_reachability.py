"""`validate` checks what `compress` needs before it trains: model, tokenizer and data reachable."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

import cli
from compress.recipe import load_recipe
from tests.tiny_runs import cli_env

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
HERE = {"sst2", "mrpc", "rte"}  # the tasks whose training files ../shared/data holds


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates_on_the_tiny_model(path, tiny_model_dir, real_glue_dir, capsys):
    args = ["validate", str(path), "--set", f"model={tiny_model_dir}", "--data-dir", str(real_glue_dir)]
    code = cli.main(args)
    out, err = capsys.readouterr()
    if load_recipe(path).task in HERE:
        assert code == 0 and "ok" in out, err
    else:  # one line naming the missing file
        assert code == 2 and err.count("\n") == 1 and "train.tsv' not found" in err, err


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "datasets")


def test_a_hub_model_missing_from_the_cache_is_one_line_naming_the_way_out(
    real_glue_dir, empty_hub_cache, capsys
):
    code = cli.main(["validate", str(REPO / "recipes/rte_int8.yaml"), "--data-dir", str(real_glue_dir)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "model 'roberta-base': not in the Hugging Face cache" in err and "--set model=" in err


def test_hub_data_missing_from_the_cache_names_data_dir(empty_hub_cache, capsys, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    code = cli.main(["validate", str(REPO / "recipes/rte_int8.yaml"), "--set", "model=minilm"])
    err = capsys.readouterr().err
    assert code == 2 and "hub dataset nyu-mll/glue, which is not cached" in err and "--data-dir" in err


def test_offline_validate_of_an_unreachable_model_answers_at_once(tmp_path):
    """A fresh process, as a user runs it: HF_HUB_OFFLINE=1 never waits on the network."""
    env = {**cli_env(tmp_path), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("GLUE_DIR", None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "cli.py", "validate", "recipes/mnli_int8.yaml", "--data-dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert time.monotonic() - started < 20
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "roberta-base" in done.stderr and "HF_HUB_OFFLINE" in done.stderr
