"""MLflow tracking: one parent run per pipeline, one nested run per stage.

Store: `MLFLOW_TRACKING_URI` when set, else the embedded SQLite file `<repo>/artifacts/mlflow.db`.
With a SQLite store, run and model artifacts go to `mlruns/` beside the database file (set
explicitly on the experiment, so it does not depend on the working directory); a tracking
server decides its own artifact location. One experiment per recipe name.

Parent run: params = recipe, task, model, seed, the data settings, and `data.source` (the
GLUE-layout folder used, `hub:<dataset id>`, or a custom task's files); recipe.yaml and
summary.json; `final_<key>` metrics.

Per stage run: params = the resolved stage config (flattened); metrics = the task metrics,
gflops, bops, bits, seconds, `tokens_layer_<i>`; the history of evaluations (each epoch, and
every `eval_steps`) as step metrics (step = optimiser step): `train_loss` and `dev_<metric>`
(the unprefixed metric is the kept checkpoint's); tags `cached`, `kind`; a `tokens_per_layer.png` plot when
the stage's model prunes.

A run ends FAILED when its block raises. A process killed outright cannot end its run, so
every run records `ltp.pid` and `ltp.host`, and the next pipeline start marks RUNNING runs of
the experiment whose process is gone (same host) as FAILED.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect.exceptions import ExternalSignal

from compress.data.sources import HUB_ID, resolve_data_dir
from compress.errors import Stopped, UserError
from compress.ltp import PRUNING_FILE
from compress.paths import user_path
from compress.pipeline import PlannedStage
from compress.recipe import Recipe, dump_recipe
from compress.stages import StageResult
from pipelines.servers import exclusive_lock, probe

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DB = REPO / "artifacts" / "mlflow.db"
PID_TAG, HOST_TAG = "ltp.pid", "ltp.host"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the embedded SQLite store under artifacts/."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


# Stores MLflow can track to: a server, a database (SQLAlchemy dialects, e.g. postgresql+psycopg2).
SUPPORTED_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def check_tracking(uri: str | None = None) -> str:
    """Fail fast, before any training, when the tracking store cannot be reached. Returns the URI."""
    uri = uri or tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme.split("+")[0] not in SUPPORTED_SCHEMES:
        raise UserError(
            f"MLFLOW_TRACKING_URI {uri[:200]!r}: unsupported scheme '{scheme}' "
            f"(use one of {', '.join(SUPPORTED_SCHEMES)}; e.g. sqlite:////abs/path/mlflow.db)"
        )
    if scheme in ("http", "https"):
        problem = probe(uri.rstrip("/") + "/health")
        if problem is not None:
            raise UserError(
                f"MLflow tracking server {uri} is {problem}: start it, or unset "
                "MLFLOW_TRACKING_URI to use the local SQLite store"
            )
    elif (path := _sqlite_path(uri)) is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"MLflow tracking store {uri}: cannot create {path.parent} ({error})") from None
    return uri


def use_tracking_store() -> str:
    """Point MLflow's fluent API (and the registry) at the store; returns the URI."""
    uri = check_tracking()
    if (path := _sqlite_path(uri)) is not None:
        _open_sqlite_store(uri, path)
    mlflow.set_tracking_uri(uri)
    return uri


def open_existing_store() -> str:
    """`use_tracking_store` for readers (pull, bench models:/): a SQLite store that does not exist
    yet holds no models, and is not created just to say so."""
    uri = tracking_uri()
    if (path := _sqlite_path(uri)) is not None and not path.is_file():
        raise UserError(
            f"no model registry at {uri}: nothing has been registered yet "
            "(run `python cli.py compress RECIPE` first, or set MLFLOW_TRACKING_URI)"
        )
    return use_tracking_store()


def _open_sqlite_store(uri: str, path: Path) -> None:
    """Open (create, migrate) the SQLite store holding a file lock: two pipelines that start at
    once on a new store would otherwise both create its tables, and one fails. MLflow keeps the
    opened store for the process; SQLite and MLflow's busy timeout serialise later writes."""
    with exclusive_lock(path.with_name(path.name + ".lock")):
        MlflowClient(uri).search_experiments(max_results=1)


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment for a recipe; created with an explicit artifact location for SQLite stores."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    path = _sqlite_path(uri)
    location = (path.parent / "mlruns").resolve().as_uri() if path is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # a concurrent pipeline created it


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def fail_orphaned_runs(client: MlflowClient, experiment: str) -> list[str]:
    """Mark RUNNING runs whose process (recorded in tags, this host) is gone as FAILED."""
    orphaned = []
    for run in client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        pid = tags.get(PID_TAG)
        if tags.get(HOST_TAG) != socket.gethostname() or not (pid and pid.isdigit()):
            continue
        if not _pid_alive(int(pid)):
            client.set_terminated(run.info.run_id, status="FAILED")
            orphaned.append(run.info.run_id)
    if orphaned:
        log.warning("marked %d run(s) of dead processes as FAILED: %s", len(orphaned), ", ".join(orphaned))
    return orphaned


def _process_tags() -> dict[str, str]:
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def flatten(payload: dict, prefix: str = "") -> dict[str, str]:
    """{"data": {"max_seq_length": 128}} -> {"data.max_seq_length": "128"}."""
    flat = {}
    for key, value in payload.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def data_source(recipe: Recipe) -> str:
    """Where the pipeline's examples come from: the GLUE-layout folder used (data.dir, else
    $GLUE_DIR; absolute), `hub:<dataset id>`, or for task custom its data files (absolute)."""
    if recipe.task == "custom":
        files = (recipe.data.train_file, recipe.data.eval_file)
        return ", ".join(str(user_path(file, "data file").resolve()) for file in files if file)
    folder = resolve_data_dir(recipe.data.dir)
    return f"hub:{HUB_ID}" if folder is None else str(folder.resolve())


@contextmanager
def pipeline_run(recipe: Recipe) -> Iterator[mlflow.ActiveRun]:
    """The parent run of one pipeline (FAILED if the block raises)."""
    uri = use_tracking_store()
    client = MlflowClient(uri)
    experiment = experiment_id(client, recipe.name, uri)
    fail_orphaned_runs(client, experiment)
    shared = recipe.model_dump(mode="json", by_alias=True, include={"seed", "data"})
    params = {"recipe": recipe.name, "task": recipe.task, "model": recipe.model, **flatten(shared)}
    params["data.source"] = data_source(recipe)
    with _mlflow_run(experiment_id=experiment, run_name=recipe.name, tags=_process_tags()) as run:
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        client.log_text(run.info.run_id, dump_recipe(recipe), "recipe.yaml")
        yield run


@contextmanager
def sweep_run(recipe: Recipe, key: str, values: list[str]) -> Iterator[mlflow.ActiveRun]:
    """The parent run of a sweep, in experiment `<recipe>-sweep` (FAILED if the block raises)."""
    uri = use_tracking_store()
    client = MlflowClient(uri)
    experiment = experiment_id(client, f"{recipe.name}-sweep", uri)
    fail_orphaned_runs(client, experiment)
    params = {"recipe": recipe.name, "task": recipe.task, "sweep.key": key, "sweep.values": ",".join(values)}
    params["data.source"] = data_source(recipe)
    with _mlflow_run(experiment_id=experiment, run_name=f"{recipe.name}: {key}", tags=_process_tags()) as run:
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        client.log_text(run.info.run_id, dump_recipe(recipe), "recipe.yaml")
        yield run


@contextmanager
def point_run(parent_run_id: str, recipe: Recipe, key: str, value: str) -> Iterator[mlflow.ActiveRun]:
    """One point of a sweep, a child run of the sweep's run: the swept value and the recipe's settings."""
    parent = MlflowClient().get_run(parent_run_id)
    shared = recipe.model_dump(mode="json", by_alias=True, include={"seed", "data"})
    params = {key: value, "model": recipe.model, **flatten(shared)}
    with _mlflow_run(
        experiment_id=parent.info.experiment_id,
        run_name=f"{key}={value}",
        nested=True,
        parent_run_id=parent_run_id,
        tags=_process_tags(),
    ) as run:
        MlflowClient().log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        yield run


def log_point(run_id: str, row: dict) -> None:
    """A sweep point's numbers as metrics: score, GFLOPs, reductions, `tokens_layer_<i>`."""
    metrics = {k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    metrics.update({f"tokens_layer_{i}": v for i, v in enumerate(row["tokens_per_layer"])})
    now = _now_ms()
    MlflowClient().log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


@contextmanager
def _mlflow_run(**start_run) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run`; a run stopped by a signal (Ctrl-C, SIGTERM) ends KILLED, not FAILED."""
    run = None
    try:
        with mlflow.start_run(**start_run) as run:
            yield run
    except (Stopped, KeyboardInterrupt, ExternalSignal):  # ExternalSignal: Prefect's SIGTERM bridge
        if run is not None:
            MlflowClient().set_terminated(run.info.run_id, status="KILLED")
        raise


def log_summary(run_id: str, summary: dict, summary_path: Path) -> None:
    """The final block as parent-run metrics (`final_<key>`), summary.json as an artifact, and the
    cached tag (true when every stage was reused)."""
    client = MlflowClient()
    final = summary["final"]
    now = _now_ms()
    metrics = [
        Metric(f"final_{key}", float(value), now, 0)
        for key, value in final.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    cached = all(stage["cached"] for stage in summary["stages"])
    client.log_batch(run_id, metrics=metrics, tags=[RunTag("cached", str(cached).lower())])
    client.log_artifact(run_id, str(summary_path))


@contextmanager
def stage_run(parent_run_id: str | None, step: PlannedStage) -> Iterator[mlflow.ActiveRun | None]:
    """A nested run for one stage under the pipeline's run (no run when there is no parent)."""
    if parent_run_id is None:
        yield None
        return
    parent = MlflowClient().get_run(parent_run_id)
    tags = {**_process_tags(), "kind": step.config.kind, "cache_key": step.cache_key}
    with _mlflow_run(
        experiment_id=parent.info.experiment_id,
        run_name=step.config.name,
        nested=True,
        parent_run_id=parent_run_id,
        tags=tags,
    ) as run:
        config = step.config.model_dump(mode="json", by_alias=True)
        MlflowClient().log_batch(run.info.run_id, params=[Param(k, v) for k, v in flatten(config).items()])
        yield run


def log_stage(run_id: str, result: StageResult) -> None:
    """Metrics, the evaluation history, the cached tag, a tokens plot when the model prunes, and a
    benchmark stage's bench.json / bench.md / bench.png."""
    client = MlflowClient()
    metrics = dict(result.metrics)
    metrics.update(gflops=result.gflops, bops=result.bops, seconds=result.seconds)
    metrics.update({f"bits_{key}": value for key, value in result.bits.items()})
    metrics.update({f"tokens_layer_{i}": value for i, value in enumerate(result.tokens_per_layer)})
    now = _now_ms()
    rows = [Metric(key, float(value), now, 0) for key, value in metrics.items()]
    for row in result.history:
        for key, value in row.items():
            if key in ("epoch", "step") or not isinstance(value, int | float):
                continue
            name = key if key == "train_loss" else f"dev_{key}"
            rows.append(Metric(name, float(value), now, int(row["step"])))
    for point in result.trace:  # a FLOPs budget's trajectory, per training step
        for key in ("fraction", "target", "lambda"):
            rows.append(Metric(f"budget_{key}", float(point[key]), now, int(point["step"])))
    client.log_batch(run_id, metrics=rows, tags=[RunTag("cached", str(result.cached).lower())])
    if (Path(result.artifact) / PRUNING_FILE).is_file():
        log_tokens_plot(client, run_id, result)
    if result.trace:
        log_budget_plot(client, run_id, result)
    for report in sorted(Path(result.artifact).glob("bench.*")):
        client.log_artifact(run_id, str(report))


def _now_ms() -> int:
    return int(time.time() * 1000)


def log_tokens_plot(client: MlflowClient, run_id: str, result: StageResult) -> None:
    """Bar chart of the mean number of tokens entering each layer (dev set): tokens_per_layer.png."""
    tokens = result.tokens_per_layer
    with _logged_figure(client, run_id, "tokens_per_layer.png") as ax:
        ax.bar(range(len(tokens)), tokens, color="tab:blue")
        ax.set_xlabel("layer")
        ax.set_ylabel("mean tokens entering")
        ax.set_title(f"{result.name}: {result.gflops:.3g} GFLOPs / example")
        ax.set_xticks(range(len(tokens)))


def log_budget_plot(client: MlflowClient, run_id: str, result: StageResult) -> None:
    """The soft stage's expected FLOPs fraction against its (warming-up) target, per step: budget.png."""
    steps = [point["step"] for point in result.trace]
    with _logged_figure(client, run_id, "budget.png") as ax:
        ax.plot(steps, [point["fraction"] for point in result.trace], label="expected FLOPs (train batch)")
        ax.plot(steps, [point["target"] for point in result.trace], "--", label="target")
        ax.set_xlabel("step")
        ax.set_ylabel("FLOPs / unpruned")
        ax.set_title(f"{result.name}: FLOPs budget")
        ax.legend()


@contextmanager
def _logged_figure(client: MlflowClient, run_id: str, name: str) -> Iterator:
    """A 5x3 inch figure's axes to draw on; the figure is logged to the run as `name`, then closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    try:
        yield ax
        fig.tight_layout()
        client.log_figure(run_id, fig, name)
    finally:
        plt.close(fig)
