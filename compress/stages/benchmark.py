"""Stage `benchmark`: time the unpruned baseline, the pruned and the final model side by side.

The models come from the recipe's earlier stages (`compress.bench.targets.select_models`); bench.json,
bench.md and bench.png land in the stage's artifact directory. The stage reports the metrics,
GFLOPs and BOPs of the model it follows (it trains nothing), so the summary's final row stays the
final model's; `speedup_*` metrics are the pruned-vs-baseline, final-vs-fp32-eager and
final-vs-ONNX-Runtime-int8 ratios at each batch size (compiled torch rows; eager ones with
`compile: false`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from compress.artifacts import RESULT_FILE, atomic_directory, read_result, write_json
from compress.bench.report import write_report
from compress.bench.targets import select_models
from compress.bench.timing import BenchSettings, run_bench
from compress.recipe import StageBase, dump_recipe
from compress.stages.base import StageInputs, StageResult


class BenchmarkConfig(StageBase):
    """Time the unpruned baseline, the pruned and the final model side by side (`compress.bench`)."""

    reads_train: ClassVar[bool] = False
    followed_only_by: ClassVar[tuple[str, ...]] = ()  # the last stage

    kind: Literal["benchmark"]
    batch_sizes: list[int] = Field([1, 8, 32, 128], min_length=1)
    threads: int = Field(2, ge=1)
    rounds: int = Field(5, ge=1)
    compile: bool = True  # also time every variant under torch.compile

    def check_order(self, earlier: list[StageBase]) -> None:
        if not earlier:
            raise ValueError(
                f"stages.{self.name}: a benchmark needs the stages that make its models before it "
                "(to time an existing artifact: python cli.py bench TARGET)"
            )


def headline_ratios(bench: dict, compiled: bool) -> dict[str, float]:
    """Per batch size: the torch pruned model's speed-up over the baseline, and the final model's
    over the fp32 eager baseline and over ONNX Runtime int8 of the unpruned model (torch rows of
    the compile setting; a final model of ONNX Runtime whatever it)."""
    ratios = {}
    for row in bench["results"]:
        batch, torch_row = row["batch_size"], row["engine"] == "torch" and row["compiled"] == compiled
        if row["variant"] == "pruned" and torch_row:
            ratios[f"speedup_pruned_b{batch}"] = row["speedup"]
            ratios[f"efficiency_pruned_b{batch}"] = row["efficiency"]
        elif row["variant"] == "final" and (torch_row or row["engine"] == "onnxruntime"):
            ratios[f"speedup_final_vs_fp32_eager_b{batch}"] = row["speedup_vs_fp32_eager"]
            if row["speedup_vs_ort_int8"] is not None:
                ratios[f"speedup_final_vs_ort_int8_b{batch}"] = row["speedup_vs_ort_int8"]
    return ratios


def run(config: BenchmarkConfig, inputs: StageInputs) -> StageResult:
    started = time.perf_counter()
    chain = [(kind, Path(folder)) for kind, folder in inputs.upstream]
    models = select_models(inputs.recipe, chain, f"stages.{config.name}")
    settings = BenchSettings(tuple(config.batch_sizes), config.threads, config.rounds, config.compile)
    bench = run_bench(models.baseline, models.pruned, models.final, inputs.recipe, settings)
    measured = read_result(Path(inputs.model))
    result = StageResult(
        name=config.name,
        kind=config.kind,
        artifact=str(inputs.output_dir),
        metrics={**measured["metrics"], **headline_ratios(bench, config.compile)},
        main_metric=measured["main_metric"],
        gflops=measured["gflops"],
        bops=measured["bops"],
        bits=measured["bits"],
        tokens_per_layer=measured["tokens_per_layer"],
        seconds=round(time.perf_counter() - started, 2),
    )
    with atomic_directory(inputs.output_dir) as scratch:
        write_report(bench, scratch)
        (scratch / "recipe.yaml").write_text(dump_recipe(inputs.recipe))
        write_json(scratch / RESULT_FILE, {**result.to_dict(), "cache_key": inputs.cache_key})
    return result
