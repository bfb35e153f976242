"""Bench targets of standard sizes with random weights: speed needs no training, nor a download.

`python cli.py bench random:roberta-base` times a RoBERTa-base-sized classifier against its top-k
pruned twin (same weights, `PruningSpec(method="topk")`) on SST-2 dev text. Top-k keeps a fixed
fraction of every example's tokens per layer, so the FLOPs reduction does not depend on what
random weights attend to: everything up to `START_LAYER`, then linearly down to `FINAL_KEEP`
of the tokens after the last layer (about 2x fewer GFLOPs on 12 layers, like LTP's).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, BertConfig, RobertaConfig

from compress.artifacts import atomic_directory, save_model
from compress.bench.targets import BenchTarget
from compress.errors import UserError
from compress.ltp import PrunableModel, PruningSpec, linear_keep_ratios
from compress.models import load_tokenizer
from compress.overrides import apply_overrides
from compress.recipe import parse_recipe

PREFIX = "random:"
ARCHITECTURES = {  # the Hugging Face defaults of both configs are the -base sizes
    "roberta-base": lambda: RobertaConfig(),
    "bert-base": lambda: BertConfig(),
    "minilm": lambda: BertConfig(hidden_size=384, num_hidden_layers=6, intermediate_size=1536),
}
START_LAYER, FINAL_KEEP = 1, 0.1


def random_target(target: str, out_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> BenchTarget:
    """Write `out_dir/baseline` and `out_dir/pruned` for `random:ARCH`; the SST-2 recipe naming them
    (with `--set`-style overrides, e.g. data.max_eval_samples=64)."""
    architecture = target.removeprefix(PREFIX)
    if architecture not in ARCHITECTURES:
        raise UserError(f"bench target {target!r}: unknown architecture (known: {', '.join(ARCHITECTURES)})")
    raw = {  # task and data only: the bench reads nothing else from the recipe
        "name": f"random_{architecture}".replace("-", "_"),
        "model": str(out_dir / "baseline"),
        "task": "sst2",
        "stages": [{"name": "finetune", "kind": "finetune"}],
    }
    recipe = parse_recipe(apply_overrides(raw, overrides), f"bench target {target!r}")
    tokenizer = load_tokenizer("minilm")  # any tokenizer whose ids fit the vocabulary
    config = ARCHITECTURES[architecture]()
    config.num_labels, config.pad_token_id = 2, tokenizer.pad_token_id
    torch.manual_seed(0)
    hf_model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    keep = linear_keep_ratios(config.num_hidden_layers, FINAL_KEEP, START_LAYER)
    for name, spec in (("baseline", None), ("pruned", PruningSpec(method="topk", keep_ratios=keep))):
        with atomic_directory(out_dir / name) as scratch:
            save_model(PrunableModel(hf_model, spec), tokenizer, scratch)
    return BenchTarget(recipe, str(out_dir / "baseline"), str(out_dir / "pruned"), None)
