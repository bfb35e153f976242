"""What every stage takes and returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from compress.recipe import Recipe


@dataclass
class StageInputs:
    recipe: Recipe  # resolved; data.dir already set from --data-dir when given
    model: str  # hub id / path / alias, or the previous stage's artifact directory
    output_dir: Path  # this stage's artifact directory (written atomically)
    teacher: str | None = None  # distillation teacher: the stage's own, else the finetune artifact
    cache_key: str | None = None  # stamped into result.json: the pipeline reuses a matching artifact
    upstream: tuple[tuple[str, str], ...] = ()  # (kind, artifact) of every earlier stage, in order


@dataclass
class StageResult:
    name: str
    kind: str
    artifact: str
    metrics: dict[str, float]  # dev metrics of the kept checkpoint, plus throughput figures
    main_metric: str
    gflops: float  # mean per dev example, encoder only, real kept-token counts
    bops: float  # mean per dev example
    bits: dict[str, int]
    tokens_per_layer: list[float]  # mean tokens entering each layer on the dev set
    seconds: float
    cached: bool = False
    history: list[dict] = field(default_factory=list)  # per evaluation (each epoch, each eval_steps)
    trace: list[dict] = field(default_factory=list)  # per training step (a FLOPs budget's trajectory)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict) -> StageResult:
        return cls(**payload)
