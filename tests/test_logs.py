"""Logs: progress bars on a terminal only, one line per epoch otherwise; no third-party noise; the
parent run's params name the data source actually used."""

import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compress.recipe import parse_recipe
from compress.stages import StageInputs
from compress.stages.common import load_inputs, train_model
from tests.conftest import REPO
from tests.tiny_runs import write_glue

EPOCH_LINE = re.compile(
    r"finetune epoch (\d)/2, step \d+/\d+: loss \d+\.\d{4}, \d+ examples/s, accuracy \d\.\d{4}"
)


def tiny_recipe(model: Path, glue: str | None, name: str = "tiny_logs", epochs: float = 2):
    data = {"max_train_samples": 64, "max_eval_samples": 32, "max_seq_length": 32}
    stage = {"name": "finetune", "kind": "finetune", "epochs": epochs, "lr": 1e-3, "batch_size": 16}
    raw = {"name": name, "model": str(model), "task": "sst2", "data": data, "stages": [stage]}
    if glue is not None:
        data["dir"] = glue
    return parse_recipe(raw, name)


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    return write_glue(tmp_path_factory.mktemp("logs"))


def train_tiny(recipe, tmp_path):
    model, _, task_data = load_inputs(StageInputs(recipe, recipe.model, tmp_path / "out"))
    return train_model(recipe.stages[0], model, task_data)


def test_off_a_terminal_training_logs_one_line_per_epoch_and_draws_no_bar(
    tmp_path, tiny_model_dir, glue, capsys, caplog
):
    recipe = tiny_recipe(tiny_model_dir, str(glue))
    assert not sys.stderr.isatty()  # pytest's capture, as a log file would be
    with caplog.at_level(logging.INFO, logger="compress"):
        result = train_tiny(recipe, tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "compress.training"]
    assert [EPOCH_LINE.fullmatch(line).group(1) for line in lines] == ["1", "2"], lines
    assert len(result.history) == 2
    printed = capsys.readouterr()
    assert "\r" not in printed.err + printed.out and "batch/s" not in printed.err + printed.out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_is_drawn(tmp_path, tiny_model_dir, glue, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train_tiny(tiny_recipe(tiny_model_dir, str(glue), epochs=1), tmp_path)
    assert "\r" in terminal.getvalue() and "finetune epoch 1" in terminal.getvalue()


def parent_params(recipe) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import pipeline_run

    with pipeline_run(recipe) as run:
        run_id = run.info.run_id
    return MlflowClient().get_run(run_id).data.params


def test_the_parent_run_names_the_folder_or_hub_the_data_came_from(
    tiny_model_dir, glue, monkeypatch, tmp_path
):
    monkeypatch.chdir(glue.parent)
    monkeypatch.delenv("GLUE_DIR", raising=False)
    assert parent_params(tiny_recipe(tiny_model_dir, "glue"))["data.source"] == str(glue.resolve())
    monkeypatch.setenv("GLUE_DIR", str(glue))
    assert parent_params(tiny_recipe(tiny_model_dir, None))["data.source"] == str(glue.resolve())
    monkeypatch.delenv("GLUE_DIR")
    assert parent_params(tiny_recipe(tiny_model_dir, None))["data.source"] == "hub:nyu-mll/glue"


def test_registering_a_model_logs_no_signature_warning(tiny_model_dir, glue, caplog):
    from pipelines.registry import register_model
    from pipelines.tracking import pipeline_run

    recipe = tiny_recipe(tiny_model_dir, str(glue), name="tiny_logs_registry")
    mlflow_pyfunc = logging.getLogger("mlflow.pyfunc")  # propagates nowhere: caplog listens there
    mlflow_pyfunc.addHandler(caplog.handler)
    try:
        with pipeline_run(recipe):
            uri = register_model(recipe, tiny_model_dir, cache_key="k")
    finally:
        mlflow_pyfunc.removeHandler(caplog.handler)
    assert uri == "models:/tiny_logs_registry@champion"
    assert not [r for r in caplog.records if "signature" in r.getMessage()], caplog.text


def test_the_cli_prints_a_hub_warning_once_and_no_font_cache_message():
    script = (
        "import logging, cli\n"
        "cli._configure_logs()\n"
        "from huggingface_hub.utils import logging as hub_logging\n"  # adds the hub's own handler
        "hub_logging.get_logger('huggingface_hub.utils._http').warning('HTTP Error 429; Retrying in 1s')\n"
        "logging.getLogger('matplotlib.font_manager').warning('Matplotlib is building the font cache')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stderr.count("Retrying in 1s") == 1, done.stderr
    assert "font cache" not in done.stderr
