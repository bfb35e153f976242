"""Stage `ltp_hard`: thresholds frozen and binarised; fine-tune with pruned tokens really dropped.

No L1 term; with `distill_alpha` the teacher's logits guide it (compress.stages.teacher).
The best dev evaluation is kept. When the soft stage had a FLOPs budget (pruning.json keeps it),
the thresholds are shifted back onto it before every evaluation (fine-tuning's new weights move
the scores), so the model trains at the budget and the checkpoint kept is on it.
The artifact carries the thresholds (pruning.json), so every later stage and `cli.py pull` get
a model that prunes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.errors import UserError
from compress.ltp import PRUNING_FILE, PrunableModel, PruningSpec
from compress.paths import user_path
from compress.recipe import StageBase
from compress.stages.base import StageInputs, StageResult
from compress.stages.common import load_inputs, save_stage, supervised_loss, train_model
from compress.stages.teacher import TeacherGuidedConfig, stage_teacher


class LTPHardConfig(TeacherGuidedConfig):
    kind: Literal["ltp_hard"]
    epochs: float = Field(5.0, gt=0, le=1000)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-5, gt=0)
    thresholds: str | None = None  # artifact dir with pruning.json, when no ltp_soft stage precedes

    def check_order(self, earlier: list[StageBase]) -> None:
        super().check_order(earlier)
        if not self.thresholds and not any(stage.kind == "ltp_soft" for stage in earlier):
            raise ValueError(
                f"stages.{self.name}: ltp_hard needs an ltp_soft stage before it or 'thresholds' "
                "(an artifact directory with pruning.json)"
            )

    def preflight(self) -> None:
        super().preflight()
        key = f"stages.{self.name}.thresholds"
        if self.thresholds and not (user_path(self.thresholds, key) / PRUNING_FILE).is_file():
            raise UserError(f"{key}: no {PRUNING_FILE} in {self.thresholds}")


def run(config: LTPHardConfig, inputs: StageInputs) -> StageResult:
    started = time.perf_counter()
    model, tokenizer, task_data = load_inputs(inputs)
    if config.thresholds:
        spec = PruningSpec.load(Path(config.thresholds), model.num_layers)
        if spec is None:
            raise UserError(f"stages.{config.name}.thresholds: no pruning.json in {config.thresholds}")
        model = PrunableModel(model.hf_model, spec)  # the offsets come from the spec
    if model.spec is None or model.spec.method != "ltp":
        raise UserError(
            f"stages.{config.name}: the input model has no learned thresholds (run ltp_soft first)"
        )
    loss_fn = supervised_loss(
        task_data.task.is_regression, "drop", stage_teacher(config, inputs, task_data.task)
    )
    precision = inputs.recipe.mixed_precision
    trained = train_model(config, model, task_data, loss_fn=loss_fn, mixed_precision=precision)
    return save_stage(inputs, config, model, tokenizer, task_data, trained.best, started, trained)
