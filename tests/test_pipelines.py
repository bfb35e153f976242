"""Orchestration: the Prefect flow, MLflow runs and registry, `pull`, and the layering rule.

One flow run (tiny random BERT, 64 SST-2 training examples, finetune -> ltp_soft -> int8, an ONNX
Runtime graph by the default engine) under a Prefect test harness and a SQLite MLflow store in a
temp dir is shared by the tests below.
"""

import ast
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import cli
import compress.pipeline
import compress.recipe
from compress.artifacts import read_result
from compress.errors import UserError
from tests.conftest import REPO, real_glue_path

NAME = "sst2_tiny"
MODEL_URI = f"models:/{NAME}@champion"


def write_recipe(folder: Path, model: Path) -> Path:
    train = {"epochs": 1, "batch_size": 16, "eval_batch_size": 32}
    recipe = {
        "name": NAME,
        "model": str(model),
        "task": "sst2",
        "seed": 0,
        "data": {"max_train_samples": 64, "max_eval_samples": 32, "max_seq_length": 64},
        "stages": [
            {"name": "finetune", "kind": "finetune", "lr": 1e-3, **train},
            {"name": "ltp_soft", "kind": "ltp_soft", "lambda": 0.1, "final_threshold": 0.01, **train},
            {"name": "int8", "kind": "quantize", "scheme": "int8_dynamic"},
        ],
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@dataclass
class Tracked:
    root: Path
    recipe: Path
    glue: Path
    uri: str
    summary: dict  # of the first run
    calls: Counter  # of the first run: recipe files read, recipes validated, preflights

    @property
    def out(self) -> Path:
        return self.root / "out"


@pytest.fixture(scope="module")
def tracked(prefect_harness, tiny_model_dir, tmp_path_factory):
    """`cli.py compress` once, tracked in a fresh SQLite store; the env stays set for the module."""
    glue = real_glue_path()
    if not (glue / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"real GLUE data is missing (looked in {glue}; set GLUE_DIR)")
    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        recipe = write_recipe(root, tiny_model_dir)
        args = ["compress", str(recipe), "--data-dir", str(glue), "--out", str(root / "out")]
        calls = Counter()
        with pytest.MonkeyPatch.context() as counting:
            for module, name, label in (
                (compress.recipe, "read_yaml", "read"),
                (compress.recipe, "check_pipeline", "check"),
                (compress.pipeline, "check_reachable", "preflight"),  # preflight's first step
            ):
                counting.setattr(module, name, counted(getattr(module, name), label, calls))
            assert cli.main(args) == 0
        summary = json.loads((root / "out" / "summary.json").read_text())
        yield Tracked(root, recipe, glue, uri, summary, calls)


def counted(function, label: str, calls: Counter):
    def wrapper(*args, **kwargs):
        calls[label] += 1
        return function(*args, **kwargs)

    return wrapper


def test_compress_reads_and_checks_the_recipe_once(tracked):
    assert tracked.calls == {"read": 1, "check": 1, "preflight": 1}


def client_of(tracked: Tracked):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracked.uri)


def stage_runs(client, parent_id: str) -> dict:
    parent = client.get_run(parent_id)
    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return {run.info.run_name: run for run in runs}


def artifact_names(client, run_id: str) -> set[str]:
    return {item.path for item in client.list_artifacts(run_id)}


def test_summary_names_the_tracking_run_and_model(tracked):
    block = tracked.summary["mlflow"]
    assert block == {"tracking_uri": tracked.uri, "run_id": block["run_id"], "model_uri": MODEL_URI}
    assert [s["cached"] for s in tracked.summary["stages"]] == [False, False, False]


def test_parent_run_has_recipe_params_and_artifacts(tracked):
    client = client_of(tracked)
    parent = client.get_run(tracked.summary["mlflow"]["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["recipe"] == NAME
    assert parent.data.params["task"] == "sst2"
    assert parent.data.params["model"] == yaml.safe_load(tracked.recipe.read_text())["model"]
    assert parent.data.params["data.max_train_samples"] == "64"
    assert parent.data.metrics["final_value"] == tracked.summary["final"]["value"]
    assert parent.data.tags["cached"] == "false"
    assert {"recipe.yaml", "summary.json"} <= artifact_names(client, parent.info.run_id)
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == NAME
    assert experiment.artifact_location == (tracked.root / "mlruns").as_uri()


def test_each_stage_is_a_nested_run_with_config_metrics_and_history(tracked):
    client = client_of(tracked)
    runs = stage_runs(client, tracked.summary["mlflow"]["run_id"])
    assert sorted(runs) == ["finetune", "int8", "ltp_soft"]
    quantized = runs["int8"].data
    assert quantized.params["scheme"] == "int8_dynamic" and quantized.metrics["bits_weight"] == 8
    assert quantized.metrics["bops"] == pytest.approx(tracked.summary["stages"][2]["bops"])
    for stage in tracked.summary["stages"][:2]:  # the training stages
        run = runs[stage["name"]]
        assert run.info.status == "FINISHED"
        assert run.data.tags["cached"] == "false" and run.data.tags["kind"] == stage["kind"]
        assert run.data.params["batch_size"] == "16" and run.data.params["kind"] == stage["kind"]
        metrics = run.data.metrics
        assert metrics["accuracy"] == pytest.approx(stage["metrics"]["accuracy"])
        assert metrics["gflops"] == pytest.approx(stage["gflops"])
        assert metrics["bops"] == pytest.approx(stage["bops"])
        assert metrics["seconds"] == pytest.approx(stage["seconds"])
        assert [metrics[f"tokens_layer_{i}"] for i in range(3)] == pytest.approx(stage["tokens_per_layer"])
        steps = [row["step"] for row in read_result(Path(stage["artifact"]))["history"]]
        assert len(steps) == 1 and steps[0] > 0  # one epoch: one evaluation, at its last optimiser step
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == steps
        assert [m.step for m in client.get_metric_history(run.info.run_id, "dev_accuracy")] == steps
    assert runs["ltp_soft"].data.params["lambda"] == "0.1"
    assert "tokens_per_layer.png" in artifact_names(client, runs["ltp_soft"].info.run_id)
    assert "tokens_per_layer.png" not in artifact_names(client, runs["finetune"].info.run_id)


def test_registered_model_loads_as_pyfunc_and_predicts_labels(tracked):
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(MODEL_URI)
    texts = ["a gripping, beautifully acted film", "dull and lifeless", "it is a movie"]
    labels = model.predict(texts)
    assert len(labels) == 3 and set(labels) <= {"0", "1"}
    served = model.unwrap_python_model()._model  # pruning and int8 both active behind predict
    assert served.quantization == "int8_dynamic" and served.spec is not None
    assert model.predict(pd.DataFrame({"text": texts})) == labels
    version = client_of(tracked).get_model_version_by_alias(NAME, "champion")
    assert version.tags["cache_key"]


def test_registered_model_loads_outside_the_checkout(tracked, tmp_path):
    """The model carries compress/ and pipelines/ as code paths: no checkout needed to load it."""
    code = (
        "import sys, mlflow.pyfunc\n"
        f"labels = mlflow.pyfunc.load_model({MODEL_URI!r}).predict(['fine', 'awful'])\n"
        "print(sys.modules['compress'].__path__[0], labels)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    where, labels = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert str(tracked.root / "mlruns") in where and "code" in where
    assert len(ast.literal_eval(labels)) == 2


def test_pull_of_an_unknown_model_is_one_line_and_writes_nothing(tracked, capsys):
    out = tracked.root / "nothing"
    assert cli.main(["pull", "models:/no_such_model@champion", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: models:/no_such_model@champion: ") and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_pull_downloads_and_evaluates_the_champion(tracked, capsys):
    out = tracked.root / "pulled"
    code = cli.main(["pull", MODEL_URI, "--out", str(out), "--evaluate", "--data-dir", str(tracked.glue)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert (out / "MLmodel").is_file()
    assert list(out.glob("artifacts/*/model.onnx")) and list(out.glob("artifacts/*/pruning.json"))
    final = tracked.summary["final"]
    assert f"{final['metric']} = {final['value']:.4f} on 32 dev examples" in printed


def test_pull_benchmarks_the_champion(tracked, capsys):
    out = tracked.root / "pulled-bench"
    assert cli.main(["pull", MODEL_URI, "--out", str(out), "--bench", "--data-dir", str(tracked.glue)]) == 0
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert {row["variant"] for row in bench["results"]} == {"baseline", "final"}  # int8 model, float base
    assert {row["dtype"] for row in bench["results"] if row["variant"] == "final"} == {"int8"}
    assert "| final | cpu | int8 |" in capsys.readouterr().out


def test_rerun_reuses_every_stage_and_the_registered_version(tracked):
    from pipelines.flow import compress_flow

    summary = compress_flow(str(tracked.recipe), [f"data.dir={tracked.glue}"], str(tracked.out), None, True)
    on_disk = json.loads((tracked.out / "summary.json").read_text())
    assert [s["cached"] for s in on_disk["stages"]] == [True, True, True]
    assert [s["seconds"] for s in on_disk["stages"]] == [0.0, 0.0, 0.0]  # no work done in this run
    for stage in tracked.summary["stages"]:  # each artifact keeps the seconds of the run that made it
        assert read_result(Path(stage["artifact"]))["seconds"] == stage["seconds"] > 0
    assert on_disk["mlflow"]["run_id"] == summary["mlflow"]["run_id"] != tracked.summary["mlflow"]["run_id"]
    assert on_disk["final"] == tracked.summary["final"]
    client = client_of(tracked)
    runs = stage_runs(client, summary["mlflow"]["run_id"])
    assert {name: run.data.tags["cached"] for name, run in runs.items()} == {
        "finetune": "true",
        "ltp_soft": "true",
        "int8": "true",
    }
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1


def test_until_an_earlier_stage_registers_nothing(tracked):
    from pipelines.flow import compress_flow

    summary = compress_flow(str(tracked.recipe), [f"data.dir={tracked.glue}"], str(tracked.out), "finetune")
    assert summary["mlflow"]["model_uri"] is None
    assert [s["cached"] for s in summary["stages"]] == [True]
    assert len(client_of(tracked).search_model_versions(f"name = '{NAME}'")) == 1


def test_a_failing_stage_fails_its_run_and_the_pipeline_run(tracked, monkeypatch):
    import pipelines.flow

    def broken(step, use_cache=True):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(pipelines.flow, "run_or_reuse", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        pipelines.flow.compress_flow(
            str(tracked.recipe), [f"data.dir={tracked.glue}"], str(tracked.root / "broken"), None, False
        )
    client = client_of(tracked)
    experiment = client.get_experiment_by_name(NAME).experiment_id
    parent = client.search_runs(
        [experiment], "tags.mlflow.parentRunId IS NULL", order_by=["attributes.start_time DESC"]
    )[0]
    assert parent.info.status == "FAILED"
    assert [run.info.status for run in stage_runs(client, parent.info.run_id).values()] == ["FAILED"]


def test_runs_of_dead_processes_are_marked_failed(tracked):
    from pipelines import tracking

    client = client_of(tracked)
    experiment = client.get_experiment_by_name(NAME).experiment_id
    finished = subprocess.Popen(["true"])
    finished.wait()
    host = socket.gethostname()
    dead = client.create_run(experiment, tags={tracking.PID_TAG: str(finished.pid), tracking.HOST_TAG: host})
    alive = client.create_run(experiment, tags={tracking.PID_TAG: str(os.getpid()), tracking.HOST_TAG: host})
    assert tracking.fail_orphaned_runs(client, experiment) == [dead.info.run_id]
    assert client.get_run(dead.info.run_id).info.status == "FAILED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    client.set_terminated(alive.info.run_id)


def test_unreachable_tracking_server_fails_in_one_line_before_training(
    tiny_model_dir, real_glue_dir, tmp_path, monkeypatch, capsys
):
    from pipelines import tracking

    uri = "http://127.0.0.1:9"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(UserError, match="http://127.0.0.1:9"):
        tracking.check_tracking()
    recipe = write_recipe(tmp_path, tiny_model_dir)
    started = time.perf_counter()
    code = cli.main(
        ["compress", str(recipe), "--data-dir", str(real_glue_dir), "--out", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and uri in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert time.perf_counter() - started < 30


def test_predict_accepts_texts_pairs_and_frames():
    import pandas as pd

    from pipelines.registry import _texts

    assert _texts("one") == (["one"], None)
    assert _texts(["a", "b"]) == (["a", "b"], None)
    assert _texts([("a", "x"), ("b", "y")]) == (["a", "b"], ["x", "y"])
    assert _texts(pd.DataFrame({"text": ["a"], "text_pair": ["x"]})) == (["a"], ["x"])


def test_compress_imports_no_orchestration_libraries():
    """compress/ is a pure library: importing every module pulls in no prefect, mlflow or typer,
    and does not initialise CUDA (on a GPU machine, a process that only imports must not take
    the device)."""
    modules = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts)
        for path in (REPO / "compress").rglob("*.py")
        if path.name != "__init__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "import torch\n"
        "print(torch.cuda.is_initialized())\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'mlflow', 'typer'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-2:] == ["False", "[]"]
