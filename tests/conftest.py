"""Shared fixtures: where the real GLUE files are, and a quiet offline environment."""

import os
from pathlib import Path

import pytest

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
