"""Tiny recipes and data for orchestration tests, and `cli.py` run as a separate process.

The data is a GLUE-layout SST-2 folder written by the test (64 train, 32 dev sentences), the
model the session's tiny random BERT: a stage takes well under a second, so what a test
measures is the orchestration around it.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import REPO

WORDS = ["good", "bad", "film", "great", "dull", "fine", "awful", "movie", "plot", "acting"]
TRAIN = {"batch_size": 16, "eval_batch_size": 32}
TIMEOUT_S = 240


def write_glue(folder: Path) -> Path:
    """SST-2 train.tsv (64 rows) and dev.tsv (32 rows) of random words under folder/glue."""
    rng = random.Random(0)
    sst2 = folder / "glue" / "SST-2"
    sst2.mkdir(parents=True)
    for name, rows in (("train.tsv", 64), ("dev.tsv", 32)):
        lines = ["sentence\tlabel"]
        lines += [" ".join(rng.choices(WORDS, k=8)) + f"\t{i % 2}" for i in range(rows)]
        (sst2 / name).write_text("\n".join(lines) + "\n")
    return folder / "glue"


def write_recipe(folder: Path, model: Path, name: str = "tiny", soft_epochs: float = 1, **extra) -> Path:
    """finetune -> ltp_soft on the data written by write_glue (folder/glue), as folder/<name>.yaml."""
    glue = folder / "glue" if (folder / "glue").is_dir() else write_glue(folder)
    stages = [
        {"name": "finetune", "kind": "finetune", "epochs": 1, "lr": 1e-3, **TRAIN},
        {"name": "ltp_soft", "kind": "ltp_soft", "epochs": soft_epochs, "lambda": 0.1, **TRAIN},
    ]
    recipe = {
        "name": name,
        "model": str(model),
        "task": "sst2",
        "seed": 0,
        "data": {"dir": str(glue), "max_train_samples": 64, "max_eval_samples": 32, "max_seq_length": 32},
        "stages": stages,
        **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def cli_env(folder: Path, **changes: str) -> dict[str, str]:
    """The environment of a separate `cli.py` process: its own MLflow store and Prefect home in
    `folder`, Prefect's temporary local API (no PREFECT_API_URL), offline, one thread."""
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}",
        PREFECT_HOME=str(folder / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    env.update(changes)
    return env


def table_rows(printed: str) -> list[list[str]]:
    """The cells of each row of the rich tables in printed output (box lines and title dropped)."""
    rows = []
    for line in printed.splitlines():
        if re.fullmatch(r"\s*[│┃|].*[│┃|]\s*", line):
            rows.append([cell.strip() for cell in re.split(r"[│┃|]", line.strip())[1:-1]])
    return rows


def start_cli(args: list, env: dict[str, str], log: Path, cwd: Path = REPO) -> subprocess.Popen:
    """`python cli.py ARGS` in its own process group (so a test can end it and its children),
    stdout and stderr to `log`."""
    with open(log, "w") as sink:
        return subprocess.Popen(
            [sys.executable, str(REPO / "cli.py"), *map(str, args)],
            cwd=cwd,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until(condition, process: subprocess.Popen, what: str, log: Path) -> None:
    """Poll `condition` while `process` runs; fail, showing its log, if it exits or times out."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert process.poll() is None, f"exited ({process.returncode}) before {what}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {what} after {TIMEOUT_S} s:\n{log.read_text()}"
        time.sleep(0.1)


def end_group(process: subprocess.Popen) -> None:
    """SIGKILL what is left of a process group start_cli made (e.g. Prefect's local API)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def finish(process: subprocess.Popen, log: Path) -> str:
    """Wait for a start_cli process; its log. Whatever it leaves running is ended."""
    try:
        process.wait(timeout=TIMEOUT_S)
    finally:
        end_group(process)
    return log.read_text()
