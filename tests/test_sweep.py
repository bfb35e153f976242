"""A sweep over one recipe key shares its unchanged stages and plots metric vs GFLOPs."""

import json
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

import cli
from pipelines.sweep import run_sweep, sweep_recipes

REPO = Path(__file__).resolve().parents[1]

RECIPE = {
    "name": "tiny_sweep",
    "task": "sst2",
    "data": {"max_train_samples": 64, "max_eval_samples": 32},
    "stages": [
        {"name": "finetune", "kind": "finetune", "epochs": 1, "batch_size": 16},
        {
            "name": "soft",
            "kind": "ltp_soft",
            "epochs": 1,
            "batch_size": 16,
            "final_threshold": 0.2,
            "temperature": 0.01,
        },
        {"name": "hard", "kind": "ltp_hard", "epochs": 1, "batch_size": 16},
    ],
}


def test_sweep_on_a_local_dask_cluster_shares_the_finetune_stage_and_plots(
    tmp_path, tiny_model_dir, real_glue_dir, prefect_harness
):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "model": str(tiny_model_dir)}))
    out = tmp_path / "sweep"
    overrides = [f"data.dir={real_glue_dir}"]
    sweep = run_sweep(
        sweep_recipes(path, "stages.soft.lambda", ["0.0", "0.5"], overrides),
        "stages.soft.lambda",
        ["0.0", "0.5"],
        out,
        workers=2,
    )
    assert [row["value"] for row in sweep["rows"]] == ["0.0", "0.5"]
    stage_dirs = sorted(p.name.split("-")[0] for p in (out / "stages").iterdir())
    assert stage_dirs == ["finetune", "hard", "hard", "soft", "soft"], "finetune ran once for both values"
    for row in sweep["rows"]:
        summary = json.loads((out / f"lambda={row['value']}" / "summary.json").read_text())
        assert summary["final"]["gflops"] == row["gflops"] > 0
    assert json.loads((out / "sweep_stages.soft.lambda.json").read_text()) == sweep
    assert (out / "sweep_stages.soft.lambda.png").stat().st_size > 1000
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tiny_sweep-sweep")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    parent = next(run for run in runs if run.data.params.get("sweep.key") == "stages.soft.lambda")
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    points = sorted(run.data.params.get("stages.soft.lambda", "-") for run in children)
    assert points == ["-", "0.0", "0.5"], "one child run per point, beside the shared finetune stage"
    assert [run.info.run_name for run in children].count("finetune") == 1
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_stages.soft.lambda.json", "sweep_stages.soft.lambda.png"} <= artifacts


def test_a_widened_sweep_keeps_the_earlier_values(tmp_path, tiny_model_dir, real_glue_dir, prefect_harness):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "model": str(tiny_model_dir)}))
    out, overrides = tmp_path / "sweep", [f"data.dir={real_glue_dir}"]
    run_sweep(
        sweep_recipes(path, "stages.soft.lambda", ["0.0"], overrides), "stages.soft.lambda", ["0.0"], out
    )
    sweep = run_sweep(
        sweep_recipes(path, "stages.soft.lambda", ["0.5"], overrides), "stages.soft.lambda", ["0.5"], out
    )
    assert [row["value"] for row in sweep["rows"]] == ["0.0", "0.5"]
    assert len([p for p in (out / "stages").iterdir() if p.name.startswith("finetune")]) == 1


def test_each_point_takes_the_model_settings_of_its_model():
    recipes = sweep_recipes(REPO / "recipes/rte_int8.yaml", "model", ["roberta-base", "minilm"], [])
    assert [r.stage("finetune").lr for r in recipes] == [2e-5, 5e-5]


def test_an_address_where_no_scheduler_answers_is_one_line(tmp_path, tiny_model_dir, real_glue_dir, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "model": str(tiny_model_dir)}))
    args = [
        "sweep",
        str(path),
        "--key",
        "stages.soft.lambda",
        "--values",
        "0.0",
        "--out",
        str(tmp_path / "out"),
    ]
    args += ["--data-dir", str(real_glue_dir), "--address", "tcp://127.0.0.1:1"]
    assert cli.main(args) == 2
    assert "no Dask scheduler answers there" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
