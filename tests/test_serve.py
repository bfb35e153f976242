"""The Prefect API check (`compress`, `serve`) and `cli.py serve`: a recipe as a deployment.

The served deployment is tested end to end against the session's Prefect test server: `serve`
runs as a separate process, the test starts a run with other parameters and waits for it.
"""

import json
import signal
import socket
import time

import pytest
from mlflow.tracking import MlflowClient

import cli
from tests.test_cli import assert_one_line_error
from tests.tiny_runs import TIMEOUT_S, cli_env, finish, start_cli, wait_until, write_recipe


@pytest.fixture
def no_server():
    """An unused localhost port: nothing answers there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/api"


def prefect_api(url: str | None):
    """PREFECT_API_URL set to `url` (None: unset) for the block, whatever the environment says."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if url is None:
        return temporary_settings(restore_defaults={PREFECT_API_URL})
    return temporary_settings(updates={PREFECT_API_URL: url})


def test_compress_reports_an_unreachable_prefect_api_first(tiny_model_dir, tmp_path, no_server, capsys):
    recipe = write_recipe(tmp_path, tiny_model_dir)
    with prefect_api(no_server):
        code = cli.main(["compress", str(recipe), "--out", str(tmp_path / "out")])
    assert_one_line_error(code, capsys.readouterr().err, f"Prefect API {no_server} is unreachable")
    assert not (tmp_path / "out").exists()


def test_serve_without_prefect_api_url_says_to_start_a_server(tiny_model_dir, tmp_path, capsys):
    recipe = write_recipe(tmp_path, tiny_model_dir)
    with prefect_api(None):
        code = cli.main(["serve", str(recipe)])
    assert_one_line_error(code, capsys.readouterr().err, "prefect server start", "PREFECT_API_URL")


def test_serve_with_an_unreachable_prefect_api_names_it(tiny_model_dir, tmp_path, no_server, capsys):
    recipe = write_recipe(tmp_path, tiny_model_dir)
    with prefect_api(no_server):
        code = cli.main(["serve", str(recipe)])
    assert_one_line_error(code, capsys.readouterr().err, f"Prefect API {no_server} is unreachable")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--set", "stages.finetune.epoch=1"], ["stages.finetune.epoch: unknown key"]),
        (["--cron", "every night"], ["--cron 'every night': not a valid cron expression"]),
    ],
)
def test_serve_checks_the_recipe_and_schedule_first(args, fragments, tiny_model_dir, tmp_path, capsys):
    recipe = write_recipe(tmp_path, tiny_model_dir)
    with prefect_api(None):
        code = cli.main(["serve", str(recipe), *args])
    assert_one_line_error(code, capsys.readouterr().err, *fragments)


def read_deployment(name: str):
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def flow_run_loggers(flow_run_id) -> set[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return {log.name for log in logs}


@pytest.mark.slow  # about 30 s: serve and the run it starts are processes
def test_a_served_recipe_runs_when_triggered_with_other_parameters(prefect_harness, tiny_model_dir, tmp_path):
    """`serve` publishes compress/<name> with the recipe as parameters and a cron schedule; a run
    started from the API with another override completes and is tracked in MLflow."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    recipe = write_recipe(tmp_path, tiny_model_dir, name="tiny_served")
    env = cli_env(tmp_path, PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_RUNNER_POLL_FREQUENCY="1")
    log = tmp_path / "serve.log"
    serving = start_cli(["serve", recipe, "--cron", "0 3 * * *", "--name", "nightly"], env, log, cwd=tmp_path)
    try:
        wait_until(lambda: read_deployment("compress/nightly") is not None, serving, "deployment", log)
        deployment = read_deployment("compress/nightly")
        assert deployment.parameters == {"recipe_path": str(recipe.resolve()), "overrides": []}
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
        run = run_deployment(
            "compress/nightly",
            parameters={"overrides": ["stages.ltp_soft.lambda=0.2"]},
            timeout=TIMEOUT_S,
            poll_interval=1,
        )
        assert run.state.is_completed(), log.read_text()
        # stage progress reaches the flow run's logs in the UI (sent by a background log worker)
        wanted, deadline = {"compress.pipeline", "compress.training"}, time.monotonic() + 30
        while not wanted <= (seen := flow_run_loggers(run.id)) and time.monotonic() < deadline:
            time.sleep(1)
        assert wanted <= seen, seen
    finally:
        serving.send_signal(signal.SIGTERM)
        printed = finish(serving, log)
    assert serving.returncode == 0 and "All deployments have been paused!" in printed, printed  # a clean stop
    summary = json.loads((tmp_path / "artifacts" / "tiny_served" / "summary.json").read_text())
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    parent = client.get_run(summary["mlflow"]["run_id"])
    assert parent.info.status == "FINISHED"
    nested = f"tags.mlflow.parentRunId = '{parent.info.run_id}' and run_name = 'ltp_soft'"
    soft = client.search_runs([parent.info.experiment_id], nested)
    assert [run.data.params["lambda"] for run in soft] == ["0.2"]
