"""What the CLI shows of a run: the stages it will execute, then a table of what each gave."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

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
    console.print(
        f"final: {final['metric']} {final['value']:.4f} (baseline {final['baseline_value']:.4f}), "
        f"{final['gflops']:.4g} GFLOPs ({final['gflops_reduction']:.2f}x fewer than "
        f"{final['baseline_gflops']:.4g})",
        highlight=False,
        soft_wrap=True,
    )
