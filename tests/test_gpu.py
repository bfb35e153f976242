"""What needs a GPU: training through accelerate on CUDA in bf16, and `make gpu-check`'s refusal
without one. The CUDA tests skip, saying so, on a machine without CUDA."""

import subprocess
import sys

import pytest
import torch

from compress.recipe import parse_recipe
from compress.stages import KINDS, StageInputs
from tests.conftest import REPO

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@CUDA
def test_finetune_trains_on_the_gpu_in_bf16(tmp_path, tiny_model_dir, real_glue_dir):
    from compress.accelerator import resolve_mixed_precision
    from compress.models import load_model

    recipe = parse_recipe(
        {
            "name": "tiny_gpu",
            "model": str(tiny_model_dir),
            "task": "sst2",
            "mixed_precision": "auto",
            "data": {"dir": str(real_glue_dir), "max_train_samples": 64, "max_eval_samples": 32},
            "stages": [{"name": "finetune", "kind": "finetune", "epochs": 2, "batch_size": 16, "lr": 1e-3}],
        },
        "tiny_gpu",
    )
    assert resolve_mixed_precision("auto") == ("bf16" if torch.cuda.is_bf16_supported() else "no")
    inputs = StageInputs(recipe, str(tiny_model_dir), tmp_path / "out")
    result = KINDS["finetune"].run(recipe.stages[0], inputs)
    assert result.metrics["train_examples_per_s"] > 0 and len(result.history) == 2
    assert all(row["train_loss"] == row["train_loss"] for row in result.history)  # finite, not NaN
    trained = load_model(str(tmp_path / "out"), 2, False)
    initial = load_model(str(tiny_model_dir), 2, False)
    assert not torch.equal(trained.hf_model.classifier.weight, initial.hf_model.classifier.weight)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_check_refuses_a_machine_without_a_gpu_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.gpu_check", "--out", str(tmp_path / "gpu-check")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: gpu-check needs a CUDA GPU; torch finds none on this machine"], done.stderr
    assert not (tmp_path / "gpu-check").exists()
