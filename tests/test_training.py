"""The training loop: seeded runs repeat exactly on CPU; the best dev epoch is the one kept."""

import copy
from pathlib import Path

import pytest
import torch
import yaml

from compress.evaluate import EvalResult
from compress.flops import EncoderCost
from compress.recipe import parse_recipe
from compress.stages import STAGES, StageInputs
from compress.stages.common import load_inputs, supervised_loss, weight_groups
from compress.training import train


def tiny_recipe(model: Path, glue: Path, **finetune):
    return parse_recipe(
        {
            "name": "tiny",
            "model": str(model),
            "task": "sst2",
            "data": {"dir": str(glue), "max_train_samples": 48, "max_eval_samples": 16},
            "stages": [{"name": "finetune", "kind": "finetune", "batch_size": 16, **finetune}],
        },
        "tiny",
    )


def test_finetune_is_deterministic_on_cpu(tmp_path, tiny_model_dir, real_glue_dir):
    recipe = tiny_recipe(tiny_model_dir, real_glue_dir, epochs=1, lr=1e-3)
    stage = recipe.stages[0]
    for name in ("a", "b"):
        STAGES["finetune"](stage, StageInputs(recipe, str(tiny_model_dir), tmp_path / name))
    first = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert first == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert yaml.safe_load((tmp_path / "a" / "recipe.yaml").read_text())["name"] == "tiny"


def test_the_best_epoch_is_restored(tmp_path, tiny_model_dir, real_glue_dir):
    recipe = tiny_recipe(tiny_model_dir, real_glue_dir, epochs=3, lr=1e-3)
    stage = recipe.stages[0]
    model, _, task_data = load_inputs(StageInputs(recipe, str(tiny_model_dir), tmp_path / "x"))
    scores, states = iter([0.5, 0.9, 0.7]), []

    def fake_evaluate(m):
        states.append(copy.deepcopy(m.state_dict()))
        counts = torch.ones(1, 2)
        return EvalResult({"accuracy": 0.0}, "accuracy", next(scores), counts, counts, EncoderCost(1, 1), 0.0)

    result = train(
        model,
        task_data.train_loader(16),
        supervised_loss(False, "off"),
        fake_evaluate,
        weight_groups(model, 0.0),
        stage,
        keep="best",
    )
    assert result.best.main == 0.9 and len(result.history) == 3
    for key, value in model.state_dict().items():
        assert torch.equal(value, states[1][key]), key
    assert not torch.equal(states[1]["hf_model.classifier.weight"], states[2]["hf_model.classifier.weight"])


def test_ltp_hard_takes_thresholds_from_an_artifact_and_keeps_them_frozen(
    tmp_path, tiny_model_dir, real_glue_dir
):
    from compress.ltp import PruningSpec

    spec = PruningSpec(final_threshold=0.05, max_length=64, threshold_offsets=[0.0, 0.01])
    (tmp_path / "thresholds").mkdir()
    spec.save(tmp_path / "thresholds")
    raw = tiny_recipe(tiny_model_dir, real_glue_dir).model_dump(mode="json", by_alias=True)
    raw["stages"] = [
        {
            "name": "hard",
            "kind": "ltp_hard",
            "epochs": 1,
            "batch_size": 16,
            "thresholds": str(tmp_path / "thresholds"),
        }
    ]
    recipe = parse_recipe(raw, "tiny")
    result = STAGES["ltp_hard"](recipe.stages[0], StageInputs(recipe, str(tiny_model_dir), tmp_path / "out"))
    saved = PruningSpec.load(tmp_path / "out")
    assert saved.threshold_offsets == pytest.approx([0.0, 0.01]) and saved.final_threshold == 0.05
    assert result.kind == "ltp_hard"
