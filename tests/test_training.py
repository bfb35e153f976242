"""The training loop: seeded runs repeat exactly on CPU; the best dev epoch is the one kept."""

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from compress.evaluate import EvalResult
from compress.flops import EncoderCost
from compress.recipe import parse_recipe
from compress.stages import KINDS, StageInputs
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


class _StubLoader(list):
    """Batches, as train() reads them: iterated per epoch, with a sampler told the epoch."""

    batch_sampler = SimpleNamespace(set_epoch=lambda epoch: None)


def test_lr_warms_up_linearly_from_zero_then_decays_to_zero():
    # 10 steps, warmup_ratio 0.2 -> 2 warm-up steps: lr x (0, 1/2), then x (10 - step) / 8 from step 2
    model = nn.Linear(1, 1)
    groups = [{"params": list(model.parameters()), "weight_decay": 0.0}]
    used = []

    def loss_fn(m, batch):
        return m(batch["x"]).square().mean(), {}

    def record_lr(optimizer, args, kwargs):  # the lr this optimizer.step() applies
        used.append(optimizer.param_groups[0]["lr"])

    counts = torch.ones(1, 2)
    hook = register_optimizer_step_pre_hook(record_lr)
    result = train(
        model,
        lambda batch_size: _StubLoader({"x": torch.ones(2, 1), "labels": torch.zeros(2)} for _ in range(5)),
        loss_fn,
        lambda m, accelerator: EvalResult(
            {"accuracy": 0.0}, "accuracy", 0.0, counts, counts, EncoderCost(1, 1), 0.0
        ),
        groups,
        SimpleNamespace(
            name="stub",
            lr=1e-3,
            epochs=2,
            warmup_ratio=0.2,
            max_grad_norm=1.0,
            batch_size=2,
            mixed_precision="auto",
            grad_accum_steps=1,
            eval_steps=None,
        ),  # fmt: skip
        keep="last",
    )
    hook.remove()
    assert result.steps == 10
    expected = [0.0, 0.5] + [(10 - step) / 8 for step in range(2, 10)]
    assert used == pytest.approx([1e-3 * factor for factor in expected])
    assert used[2] == pytest.approx(1e-3) and used[-1] == pytest.approx(1e-3 / 8)  # peak; last step


def test_finetune_is_deterministic_on_cpu(tmp_path, tiny_model_dir, real_glue_dir):
    recipe = tiny_recipe(tiny_model_dir, real_glue_dir, epochs=1, lr=1e-3)
    stage = recipe.stages[0]
    for name in ("a", "b"):
        KINDS["finetune"].run(stage, StageInputs(recipe, str(tiny_model_dir), tmp_path / name))
    first = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert first == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert yaml.safe_load((tmp_path / "a" / "recipe.yaml").read_text())["name"] == "tiny"


def train_with_scripted_scores(recipe, tmp_path, model_dir, scores: list[float]):
    """Train the recipe's first stage with dev scores given in advance; every evaluated state too."""
    model, _, task_data = load_inputs(StageInputs(recipe, str(model_dir), tmp_path / "x"))
    upcoming, states = iter(scores), []

    def scripted_evaluate(m, accelerator):
        states.append(copy.deepcopy(m.state_dict()))
        counts = torch.ones(1, 2)
        return EvalResult(
            {"accuracy": 0.0}, "accuracy", next(upcoming), counts, counts, EncoderCost(1, 1), 0.0
        )

    stage = recipe.stages[0]
    groups = weight_groups(model, 0.0)
    result = train(
        model, task_data.train_loader, supervised_loss(False, "off"), scripted_evaluate, groups, stage
    )
    return model, result, states


def test_the_best_epoch_is_restored(tmp_path, tiny_model_dir, real_glue_dir):
    recipe = tiny_recipe(tiny_model_dir, real_glue_dir, epochs=3, lr=1e-3)
    model, result, states = train_with_scripted_scores(recipe, tmp_path, tiny_model_dir, [0.5, 0.9, 0.7])
    assert result.best.main == 0.9 and len(result.history) == 3
    for key, value in model.state_dict().items():
        assert torch.equal(value, states[1][key]), key
    assert not torch.equal(states[1]["hf_model.classifier.weight"], states[2]["hf_model.classifier.weight"])


def test_eval_steps_evaluates_mid_epoch_too_and_keeps_the_best_of_all(
    tmp_path, tiny_model_dir, real_glue_dir
):
    # 48 examples in batches of 16: 3 steps an epoch; every 2 steps and each epoch's end
    recipe = tiny_recipe(tiny_model_dir, real_glue_dir, epochs=2, lr=1e-3, eval_steps=2)
    model, result, states = train_with_scripted_scores(recipe, tmp_path, tiny_model_dir, [0.5, 0.6, 0.9, 0.7])
    assert [(row["epoch"], row["step"]) for row in result.history] == [(1, 2), (1, 3), (2, 4), (2, 6)]
    assert result.best.main == 0.9 and model.training is False
    for key, value in model.state_dict().items():
        assert torch.equal(value, states[2][key]), key


def test_an_eval_step_at_an_epochs_end_evaluates_once(tmp_path, tiny_model_dir, real_glue_dir):
    recipe = tiny_recipe(tiny_model_dir, real_glue_dir, epochs=2, lr=1e-3, eval_steps=3)  # 3 steps an epoch
    _, result, _ = train_with_scripted_scores(recipe, tmp_path, tiny_model_dir, [0.5, 0.6])
    assert [(row["epoch"], row["step"]) for row in result.history] == [(1, 3), (2, 6)]


def test_ltp_hard_takes_thresholds_from_an_artifact_and_keeps_them_frozen(
    tmp_path, tiny_model_dir, real_glue_dir
):
    from compress.ltp import PruningSpec

    spec = PruningSpec(final_threshold=0.05, max_length=64, threshold_offsets=[0.0, 0.01, 0.02])
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
    result = KINDS["ltp_hard"].run(
        recipe.stages[0], StageInputs(recipe, str(tiny_model_dir), tmp_path / "out")
    )
    saved = PruningSpec.load(tmp_path / "out")
    assert saved.threshold_offsets == pytest.approx([0.0, 0.01, 0.02]) and saved.final_threshold == 0.05
    assert result.kind == "ltp_hard"
