"""MLflow model registry: the final stage's artifact as a pyfunc model, `models:/NAME@ALIAS`.

The registered model is an `mlflow.pyfunc` model logged from code (`pyfunc_model.py`, no
pickle) whose only artifact is the stage's artifact directory (Hugging Face weights,
tokenizer, pruning.json, recipe.yaml). `compress/` and `pipelines/` travel as code paths, so
loading needs only the pinned requirements, not this checkout. `predict` takes a list of
texts (or of (text, text_pair) pairs), or a DataFrame with a `text` column (and `text_pair`
for pair tasks), and returns label names, or scores for regression, running the pruned model
with tokens really dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.store.artifact.utils.models import get_model_name_and_version
from mlflow.tracking import MlflowClient

from compress.artifacts import atomic_directory
from compress.errors import UserError
from compress.paths import check_output_dir

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
ARTIFACT_KEY = "model"  # name of the stage artifact inside the pyfunc model
DEFAULT_ALIAS = "champion"
REQUIREMENTS = (
    "mlflow",
    "torch",
    "torchao",
    "transformers",
    "safetensors",
    "onnxruntime",  # runs a final artifact of engine onnxruntime
    "numpy",
    "pandas",
    "pydantic",
    "pyyaml",
)


class PrunedClassifier(mlflow.pyfunc.PythonModel):
    """A `compress` artifact behind MLflow's pyfunc interface (built by `pyfunc_model.py`).

    The model config carries `labels` (class names in index order; None for regression),
    `num_labels` and `max_length` (the recipe's data.max_seq_length).
    """

    def load_context(self, context) -> None:
        from compress.models import load_model, load_tokenizer

        config = context.model_config
        self.labels, self.max_length = config["labels"], config["max_length"]
        self.batch_size = config.get("batch_size", 64)
        directory = context.artifacts[ARTIFACT_KEY]
        self._tokenizer = load_tokenizer(directory)
        self._model = load_model(directory, config["num_labels"], regression=self.labels is None).eval()

    # The DataFrame hint keeps MLflow from converting inputs; lists and strings are accepted too.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> list:
        import torch

        texts, pairs = _texts(model_input)
        outputs: list = []
        for start in range(0, len(texts), self.batch_size):
            end = start + self.batch_size
            encoded = self._tokenizer(
                texts[start:end],
                pairs[start:end] if pairs else None,
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            with torch.no_grad():
                logits = self._model(
                    encoded["input_ids"],
                    encoded["attention_mask"],
                    encoded.get("token_type_ids"),
                    mode="drop",
                ).logits  # (B, C)
            if self.labels is None:
                outputs += [float(x) for x in logits[:, 0]]
            else:
                outputs += [self.labels[i] for i in logits.argmax(dim=-1).tolist()]
        return outputs


def _texts(model_input) -> tuple[list[str], list[str] | None]:
    """Texts (and pair texts) from a string, a list, a Series or a DataFrame with 'text'[, 'text_pair']."""
    if isinstance(model_input, str):
        return [model_input], None
    if isinstance(model_input, pd.Series):
        model_input = model_input.tolist()
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        pairs = model_input["text_pair"].astype(str).tolist() if "text_pair" in model_input else None
        return model_input[column].astype(str).tolist(), pairs
    rows = list(model_input)
    if rows and isinstance(rows[0], list | tuple):
        return [str(r[0]) for r in rows], [str(r[1]) for r in rows]
    return [str(r) for r in rows], None


def _task_of(recipe):
    from compress.data.task_data import load_examples
    from compress.data.tasks import get_task

    if recipe.task != "custom":
        return get_task(recipe.task)
    return load_examples(recipe, need_train=bool(recipe.data.train_file))[0]  # labels come from the files


def pip_requirements() -> list[str]:
    return [f"{name}=={version(name).split('+')[0]}" for name in REQUIREMENTS]


def register_model(recipe, artifact_dir: Path, cache_key: str, alias: str = DEFAULT_ALIAS) -> str:
    """Log the artifact as a pyfunc model in the active run, register it as recipe.name, set the alias.

    A re-run that produced the same artifact (same cache key) keeps the version the alias
    points to instead of adding a copy. Returns `models:/NAME@ALIAS`.
    """
    client = MlflowClient()
    name, model_uri = recipe.name, f"models:/{recipe.name}@{alias}"
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None  # no such model or alias yet
    if current is not None and current.tags.get("cache_key") == cache_key:
        log.info("%s is already version %s of the same artifact", model_uri, current.version)
        return model_uri
    task = _task_of(recipe)
    with _without_signature_warning():  # no signature on purpose: see _NoSignatureWarning
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT_KEY,
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # models from code, no pickle
            model_config={
                "labels": list(task.labels) if task.labels else None,
                "num_labels": task.num_labels,
                "max_length": recipe.data.max_seq_length,
            },
            artifacts={ARTIFACT_KEY: str(artifact_dir)},
            code_paths=[str(REPO / "compress"), str(REPO / "pipelines")],
            pip_requirements=pip_requirements(),
            registered_model_name=name,
        )
    version_number = info.registered_model_version
    client.set_model_version_tag(name, version_number, "cache_key", cache_key)
    client.set_registered_model_alias(name, alias, version_number)
    log.info("registered %s (version %s)", model_uri, version_number)
    return model_uri


class _NoSignatureWarning(logging.Filter):
    """MLflow warns on every registration that `predict`'s DataFrame hint gives no signature. There is
    none on purpose: a signature would have MLflow check and convert inputs to its schema, while
    `predict` takes texts, pairs and frames as they are (`_texts`). The warning tells a user nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to infer model signature: Type hint")


@contextmanager
def _without_signature_warning() -> Iterator[None]:
    """`_NoSignatureWarning` on the one logger that emits it, for the duration of the block."""
    logger, only = logging.getLogger("mlflow.pyfunc"), _NoSignatureWarning()
    logger.addFilter(only)
    try:
        yield
    finally:
        logger.removeFilter(only)


def pull_model(model_uri: str, out_dir: Path) -> Path:
    """Download a registered model to OUT; returns the `compress` artifact directory inside it.

    The URI is resolved before anything is written; the download lands in a scratch folder
    renamed into place, so a bad URI or a failed download leaves nothing behind.
    """
    from pipelines.tracking import open_existing_store

    if not model_uri.startswith("models:/"):
        raise UserError(
            f"{model_uri[:200]}: expected a registered model, models:/NAME@ALIAS or models:/NAME/N"
        )
    check_output_dir(out_dir, "--out", ours=("MLmodel",))
    uri = open_existing_store()
    try:
        get_model_name_and_version(MlflowClient(uri), model_uri)
    except MlflowException as error:
        raise UserError(f"{model_uri}: {_first_line(error)} (tracking store: {uri})") from None
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, replace_if=("MLmodel",)) as scratch:
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(scratch))
        except MlflowException as error:
            raise UserError(f"{model_uri}: cannot download it: {_first_line(error)}") from None
    flavor = Model.load(str(out_dir)).flavors.get("python_function", {})
    artifact = flavor.get("artifacts", {}).get(ARTIFACT_KEY)
    if artifact is None:
        raise UserError(f"{model_uri}: not an ltp-compress model (no '{ARTIFACT_KEY}' artifact)")
    return out_dir / artifact["path"]


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__


def evaluate_artifact(artifact_dir: Path, overrides: list[str] | None = None) -> dict:
    """The artifact's dev-set metric, on the data its recipe.yaml names (overrides apply)."""
    from compress.evaluate import evaluate_saved
    from compress.recipe import load_recipe

    recipe = load_recipe(Path(artifact_dir) / "recipe.yaml", overrides or [])
    result = evaluate_saved(recipe, str(artifact_dir))
    return {
        "metric": result.main_metric,
        "value": result.main,
        "gflops": round(result.cost.gflops, 6),
        "examples": int(result.tokens_in.shape[0]),
        "metrics": result.metrics,
    }
