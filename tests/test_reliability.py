"""`cli.py compress` as separate processes: killed outright and resumed, two at once, and a user
mistake that only shows once a stage runs.

Each run is a real process with Prefect's temporary local API (7-15 s to start) and an
embedded SQLite MLflow store in the test's temp dir, on the tiny model and data. Marked slow,
they run in the default suite; `-m "not slow"` leaves them out.
"""

import json
import os
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from compress.ltp import PruningSpec
from tests.tiny_runs import TRAIN, cli_env, end_group, finish, start_cli, table_rows, wait_until, write_recipe

pytestmark = pytest.mark.slow  # 30-45 s each: processes that start Prefect's local API


def runs_by_name(uri: str, recipe: str) -> dict[str, list]:
    """The experiment's runs by name, oldest first."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(recipe).experiment_id
    runs = {}
    for run in client.search_runs([experiment], order_by=["attributes.start_time ASC"]):
        runs.setdefault(run.info.run_name, []).append(run)
    return runs


def test_a_killed_run_resumes_from_its_last_complete_stage(tmp_path, tiny_model_dir):
    """SIGKILL during the second stage: no artifact of it looks complete, the rerun of the same
    recipe reuses the first stage, and the killed run's MLflow runs end FAILED, not RUNNING."""
    recipe = write_recipe(tmp_path, tiny_model_dir, soft_epochs=30)  # ltp_soft: a few seconds
    env, out = cli_env(tmp_path), tmp_path / "out"
    args = ["compress", recipe, "--out", out]
    log = tmp_path / "killed.log"
    killed = start_cli(args, env, log)
    try:
        started = "stage ltp_soft (ltp_soft): running"
        wait_until(lambda: started in log.read_text(), killed, "ltp_soft start", log)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
    finally:
        end_group(killed)
    assert killed.returncode == -signal.SIGKILL
    stages = out / "stages"
    complete = [p.name for p in stages.iterdir() if (p / "result.json").exists() and p.name[0] != "."]
    assert complete == ["finetune"] and not (out / "summary.json").exists()
    uri = env["MLFLOW_TRACKING_URI"]
    statuses = {name: [r.info.status for r in runs] for name, runs in runs_by_name(uri, "tiny").items()}
    assert statuses == {"tiny": ["RUNNING"], "finetune": ["FINISHED"], "ltp_soft": ["RUNNING"]}

    log = tmp_path / "rerun.log"
    rerun = start_cli(args, env, log)
    printed = finish(rerun, log)
    assert rerun.returncode == 0, printed
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["name"], s["cached"]) for s in summary["stages"]] == [("finetune", True), ("ltp_soft", False)]
    assert json.loads((stages / "ltp_soft" / "result.json").read_text())["name"] == "ltp_soft"
    runs = runs_by_name(uri, "tiny")
    for name in ("tiny", "ltp_soft"):
        assert [r.info.status for r in runs[name]] == ["FAILED", "FINISHED"], name
    assert runs["finetune"][1].data.tags["cached"] == "true"
    assert "tiny: finetune (finetune) -> ltp_soft (ltp_soft)" in printed  # the stage list, then the table
    rows = table_rows(printed)
    assert rows[0] == ["stage", "kind", "accuracy", "GFLOPs", "BOPs", "seconds", "cached"]
    assert [(row[0], row[-1]) for row in rows[1:]] == [("finetune", "yes"), ("ltp_soft", "no")]


def test_two_pipelines_at_once_share_one_sqlite_store(tmp_path, tiny_model_dir):
    """Two runs of one recipe start together on a new store (same Prefect home, other outputs):
    both finish, and both parent runs are FINISHED."""
    recipe = write_recipe(tmp_path, tiny_model_dir)
    env = cli_env(tmp_path)
    logs = [tmp_path / f"run{i}.log" for i in (1, 2)]
    runs = [start_cli(["compress", recipe, "--out", tmp_path / f"out{i}"], env, logs[i - 1]) for i in (1, 2)]
    for process, log in zip(runs, logs, strict=True):
        printed = finish(process, log)
        assert process.returncode == 0, printed
    parents = runs_by_name(env["MLFLOW_TRACKING_URI"], "tiny")["tiny"]
    assert [run.info.status for run in parents] == ["FINISHED", "FINISHED"]
    summaries = [json.loads((tmp_path / f"out{i}" / "summary.json").read_text()) for i in (1, 2)]
    assert {s["mlflow"]["run_id"] for s in summaries} == {run.info.run_id for run in parents}


def test_a_user_mistake_found_inside_a_stage_is_one_line_without_traceback(
    prefect_harness, tmp_path, tiny_model_dir
):
    """ltp_hard given a top-k artifact's pruning.json as thresholds passes the checks and fails
    when the stage loads it: a UserError raised inside a Prefect task. (The run reports to the
    session's Prefect test server, which saves starting a local API.)"""
    from prefect.settings import PREFECT_API_URL

    topk = tmp_path / "topk"
    topk.mkdir()
    PruningSpec(method="topk", keep_ratios=[1.0, 0.5, 0.5]).save(topk)
    hard = {"name": "ltp_hard", "kind": "ltp_hard", "epochs": 1, "thresholds": str(topk), **TRAIN}
    recipe = write_recipe(tmp_path, tiny_model_dir, stages=[hard])
    log = tmp_path / "cli.log"
    env = cli_env(tmp_path, PREFECT_API_URL=PREFECT_API_URL.value())
    process = start_cli(["compress", recipe, "--out", tmp_path / "out"], env, log)
    printed = finish(process, log)
    errors = [line for line in printed.splitlines() if line.startswith("error:")]
    assert process.returncode == 2, printed
    assert len(errors) == 1 and errors[0].startswith("error: stages.ltp_hard: "), printed
    assert "Traceback" not in printed
    assert "prefect.task_runs: Task run failed with exception: UserError" in printed  # raised in the task
    assert not (tmp_path / "out" / "stages" / "ltp_hard").exists()


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc; Linux)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_process_group_ends_the_run_cleanly(tmp_path, tiny_model_dir, signum, code):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM during a
    stage: one line, exit 130 / 143, runs KILLED, no half-written stage, no process left behind."""
    recipe = write_recipe(tmp_path, tiny_model_dir, soft_epochs=30)
    env, out = cli_env(tmp_path), tmp_path / "out"
    log = tmp_path / "cli.log"
    process = start_cli(["compress", recipe, "--out", out], env, log)
    try:
        wait_until(lambda: "stage ltp_soft (ltp_soft): running" in log.read_text(), process, "ltp_soft", log)
        children = descendants(process.pid)
        assert children, "the temporary Prefect API should run as a child"
        os.killpg(process.pid, signum)
        process.wait(timeout=60)
        deadline = time.monotonic() + 10
        while any(map(alive, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [pid for pid in children if alive(pid)]
    finally:
        end_group(process)
    printed = log.read_text()
    assert process.returncode == code, printed
    name = signal.Signals(signum).name
    errors = [line for line in printed.splitlines() if line.startswith("error:")]
    assert errors == [f"error: stopped by {name}; finished stages are kept and a re-run resumes"], printed
    assert "Traceback" not in printed
    assert survivors == [], f"left running: {survivors}"
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["finetune"]  # no scratch folder left
    statuses = {
        n: [r.info.status for r in runs]
        for n, runs in runs_by_name(env["MLFLOW_TRACKING_URI"], "tiny").items()
    }
    assert statuses == {"tiny": ["KILLED"], "finetune": ["FINISHED"], "ltp_soft": ["KILLED"]}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_the_temporary_prefect_api_dies_with_a_killed_run(tmp_path, tiny_model_dir):
    """SIGKILL to the CLI alone (nothing can clean up): its Prefect API server still ends."""
    recipe = write_recipe(tmp_path, tiny_model_dir, soft_epochs=30)
    env, log = cli_env(tmp_path), tmp_path / "cli.log"
    process = start_cli(["compress", recipe, "--out", tmp_path / "out"], env, log)
    try:
        wait_until(lambda: "stage finetune (finetune): running" in log.read_text(), process, "finetune", log)
        children = descendants(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 15
        while any(map(alive, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert children and not any(map(alive, children)), log.read_text()
    finally:
        end_group(process)
