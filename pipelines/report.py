"""What the CLI shows of a run: the stages it will execute, then a table of what each gave; and
the README's results table, made from runs' summary.json files (`cli.py results`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rich.console import Console
from rich.table import Table

from compress.errors import UserError
from compress.recipe import Recipe


def stage_list(recipe: Recipe, until: str | None = None) -> str:
    """`finetune (finetune) -> ltp_soft (ltp_soft)`: the stages a run executes, in order."""
    return " -> ".join(f"{stage.name} ({stage.kind})" for stage in recipe.until(until))


def summary_table(summary: dict) -> Table:
    """One row per stage: stage, kind, the task metric, GFLOPs, BOPs, seconds, cached. A reused
    stage did no work in this run: its seconds read "cached", not the seconds of the run that made it."""
    metric = summary["final"]["metric"]
    table = Table(title=f"{summary['recipe']}: {summary['task']} on {summary['model']}")
    table.add_column("stage")
    table.add_column("kind")
    for column in (metric, "GFLOPs", "BOPs", "seconds"):
        table.add_column(column, justify="right")
    table.add_column("cached")
    for stage in summary["stages"]:
        value = stage["metrics"].get(metric)
        table.add_row(
            stage["name"],
            stage["kind"],
            "-" if value is None else f"{value:.4f}",
            f"{stage['gflops']:.4g}",
            f"{stage['bops']:.4g}",
            "cached" if stage["cached"] else f"{stage['seconds']:.1f}",
            "yes" if stage["cached"] else "no",
        )
    return table


def print_summary(summary: dict, console: Console | None = None) -> None:
    """The stage table, then the final model against the baseline."""
    console = console or Console()
    final = summary["final"]
    console.print(summary_table(summary))
    speeds = _speedups(summary)
    console.print(
        f"final: {final['metric']} {final['value']:.4f} (baseline {final['baseline_value']:.4f}), "
        f"{final['gflops']:.4g} GFLOPs ({final['gflops_reduction']:.2f}x fewer than "
        f"{final['baseline_gflops']:.4g}), {final['bops_reduction_vs_fp16']:.1f}x fewer BOPs than FP16"
        + (f"; {speeds}" if speeds else ""),
        highlight=False,
        soft_wrap=True,
    )


def benchmark_metrics(summary: dict) -> dict:
    """The metrics of a run's benchmark stage (the speed-ups), or {} when it has none."""
    return next((stage["metrics"] for stage in summary["stages"] if stage["kind"] == "benchmark"), {})


def _speedups(summary: dict) -> str:
    """'batch 1: 1.63x ONNX Runtime int8, 7.64x HF fp32 eager; batch 32: ...' from a benchmark stage."""
    metrics = benchmark_metrics(summary)
    peers = {"speedup_final_vs_ort_int8_b": "ONNX Runtime int8"}
    peers["speedup_final_vs_fp32_eager_b"] = "HF fp32 eager"
    by_batch: dict[int, list[str]] = {}
    for key, value in metrics.items():
        for prefix, peer in peers.items():
            if key.startswith(prefix):
                by_batch.setdefault(int(key.removeprefix(prefix)), []).append(f"{value:.2f}x {peer}")
    return "; ".join(f"batch {batch}: {', '.join(parts)}" for batch, parts in sorted(by_batch.items()))


RESULTS_BEGIN, RESULTS_END = "<!-- results:begin -->", "<!-- results:end -->"
RESULTS_HEADER = (
    "| recipe | model | task | teacher | final | GFLOPs teacher -> final | BOPs vs FP16 "
    "| vs ONNX Runtime int8, batch 1 / 32 | vs HF fp32 eager, batch 1 / 32 |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def results_row(summary: dict) -> str:
    """One run as a row of the results table: metric before and after, GFLOPs, BOPs, and the final
    model's speed-ups from its benchmark stage (if it has one) at batch 1 and 32."""
    final = summary["final"]
    delta = 100 * (final["value"] - final["baseline_value"])
    speeds = benchmark_metrics(summary)

    def pair(prefix: str) -> str:
        values = [speeds.get(f"{prefix}_b{batch}") for batch in (1, 32)]
        return " / ".join("-" if v is None else f"{v:.2f}x" for v in values)

    return (
        f"| `{summary['recipe']}` | {summary['model']} | {summary['task']} "
        f"| {final['metric']} {final['baseline_value']:.4f} "
        f"| {final['value']:.4f} ({delta:+.1f}) "
        f"| {final['baseline_gflops']:.3f} -> {final['gflops']:.3f} ({final['gflops_reduction']:.2f}x) "
        f"| {final['bops_reduction_vs_fp16']:.1f}x "
        f"| {pair('speedup_final_vs_ort_int8')} | {pair('speedup_final_vs_fp32_eager')} |"
    )


def results_table(paths: list[Path]) -> str:
    """The markdown results table of the runs whose summary.json files are given, in that order."""
    rows = []
    for path in paths:
        try:
            rows.append(results_row(json.loads(Path(path).read_text())))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(f"{path}: not a run's summary.json ({type(error).__name__}: {error})") from None
    return "\n".join([RESULTS_HEADER, *rows])


def replace_results(readme: Path, table: str) -> None:
    """Put `table` between the results markers of `readme` (written back whole, by a rename)."""
    try:
        text = readme.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--readme {readme}: cannot read it ({type(error).__name__})") from None
    pattern = re.compile(re.escape(RESULTS_BEGIN) + ".*?" + re.escape(RESULTS_END), re.S)
    if not pattern.search(text):
        raise UserError(f"{readme}: no {RESULTS_BEGIN} ... {RESULTS_END} block to fill")
    scratch = readme.with_name(f".{readme.name}.partial")
    scratch.write_text(pattern.sub(lambda _: f"{RESULTS_BEGIN}\n{table}\n{RESULTS_END}", text))
    scratch.replace(readme)
