"""`cli.py compress` data parallel: two processes on the CPU (gloo), started by torchrun.

The main process runs the Prefect flow and alone writes artifacts, the summary, the MLflow runs
and the registered model; the other trains alongside it. Marked slow: a minute of processes.
"""

import json
import socket
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.tiny_runs import TIMEOUT_S, cli_env, write_recipe

pytestmark = pytest.mark.slow


def launch(processes: int, args: list, env: dict, log):
    """`torchrun --nproc_per_node N cli.py ARGS` on the CPU: N processes, gloo (accelerate's own
    `launch --cpu` starts several CPU processes only through MPI)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command += ["--master_port", str(free_port()), str(REPO / "cli.py"), *map(str, args)]
    with open(log, "w") as sink:
        return subprocess.run(
            command,
            cwd=REPO,
            env={**env, "CUDA_VISIBLE_DEVICES": ""},
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT_S * 2,
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_make_one_run(prefect_harness, tmp_path, tiny_model_dir):
    from prefect.settings import PREFECT_API_URL

    recipe = write_recipe(tmp_path, tiny_model_dir)  # finetune -> ltp_soft, batch 16: 8 per process
    env = cli_env(tmp_path, PREFECT_API_URL=PREFECT_API_URL.value())
    out, log = tmp_path / "out", tmp_path / "launch.log"
    done = launch(2, ["compress", recipe, "--out", out], env, log)
    printed = log.read_text()
    assert done.returncode == 0, printed
    summary = json.loads((out / "summary.json").read_text())
    assert [stage["name"] for stage in summary["stages"]] == ["finetune", "ltp_soft"]
    assert "data parallel: training stages run in 2 processes" in printed
    assert printed.count("finetune epoch 1/1") == 1, "one process reports"
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([experiment])
    assert sorted(run.info.run_name for run in runs) == ["finetune", "ltp_soft", "tiny"]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert len(client.search_model_versions("name = 'tiny'")) == 1


def test_a_batch_that_does_not_split_between_the_processes_is_one_line(
    prefect_harness, tmp_path, tiny_model_dir
):
    from prefect.settings import PREFECT_API_URL

    odd = {"name": "finetune", "kind": "finetune", "epochs": 1, "batch_size": 15}
    recipe = write_recipe(tmp_path, tiny_model_dir, stages=[odd])
    env = cli_env(tmp_path, PREFECT_API_URL=PREFECT_API_URL.value())
    log = tmp_path / "launch.log"
    done = launch(2, ["compress", recipe, "--out", tmp_path / "out"], env, log)
    printed = log.read_text()
    errors = [line for line in printed.splitlines() if line.startswith("error:")]
    assert done.returncode != 0
    assert errors == [
        "error: stages.finetune.batch_size: 15 does not split into 1 accumulation steps x 2 processes"
    ], printed
    assert "UserError" not in printed  # (torchrun adds a traceback of its own for a failed child)
    assert not (tmp_path / "out").exists()
