"""The stage registry: a new kind is one module (config + run) and one `register` line."""

import time
from typing import ClassVar, Literal

import pytest
import yaml
from pydantic import Field

import cli
from compress.pipeline import run_pipeline
from compress.recipe import StageBase, parse_recipe
from compress.stages import KINDS, StageInputs, StageResult, register
from compress.stages.common import evaluator, load_inputs, save_stage


class EchoConfig(StageBase):
    """A toy kind: the input model evaluated and saved unchanged."""

    reads_train: ClassVar[bool] = False

    kind: Literal["echo"]
    eval_batch_size: int = Field(16, ge=1)


def run(config: EchoConfig, inputs: StageInputs) -> StageResult:
    started = time.perf_counter()
    model, tokenizer, task_data = load_inputs(inputs, need_train=False)
    evaluation = evaluator(task_data, config.eval_batch_size, "off" if model.spec is None else "drop")(model)
    return save_stage(inputs, config, model, tokenizer, task_data, evaluation, started)


@pytest.fixture
def echo_kind():
    register(EchoConfig, run)
    yield
    del KINDS["echo"]


def echo_recipe(model_dir, glue_dir, **echo_settings) -> dict:
    """finetune (one tiny epoch) -> echo."""
    return {
        "name": "tiny_echo",
        "model": str(model_dir),
        "task": "sst2",
        "data": {"dir": str(glue_dir), "max_train_samples": 16, "max_eval_samples": 16},
        "stages": [
            {"name": "finetune", "kind": "finetune", "epochs": 1, "batch_size": 16},
            {"name": "echo", "kind": "echo", **echo_settings},
        ],
    }


def test_a_kind_is_registered_once_by_its_literal():
    with pytest.raises(ValueError, match="stage kind 'finetune' is already registered"):
        register(KINDS["finetune"].config, KINDS["finetune"].run)
    assert list(KINDS) == ["finetune", "ltp_soft", "ltp_hard", "topk", "distill", "quantize", "benchmark"]


def test_the_cli_validates_a_registered_kind(echo_kind, tmp_path, tiny_model_dir, real_glue_dir, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(echo_recipe(tiny_model_dir, real_glue_dir)))
    assert cli.main(["validate", str(path)]) == 0
    assert "ok" in capsys.readouterr().out

    path.write_text(yaml.safe_dump(echo_recipe(tiny_model_dir, real_glue_dir, colour="red")))
    assert cli.main(["validate", str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stages.echo.colour: unknown key" in errors[0], errors


def test_the_pipeline_runs_a_registered_kind(echo_kind, tmp_path, tiny_model_dir, real_glue_dir):
    recipe = parse_recipe(echo_recipe(tiny_model_dir, real_glue_dir), "tiny_echo")
    summary = run_pipeline(recipe, tmp_path / "run")
    finetuned, echoed = summary["stages"]
    assert echoed["kind"] == "echo"
    assert echoed["metrics"]["accuracy"] == finetuned["metrics"]["accuracy"], "the model is unchanged"
    assert (tmp_path / "run" / "stages" / "echo" / "result.json").is_file()
