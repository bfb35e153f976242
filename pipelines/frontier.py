"""Accuracy against GFLOPs of several methods on one task, in one plot (`cli.py frontier`).

Each curve is `LABEL=PATH[,PATH...]`: a sweep's `sweep_<key>.json` gives all its points, a run's
`summary.json` one point (its final model). Every point is read with the unpruned baseline it
was measured against, drawn as a star. The plot and its data (FILE.png, FILE.json) are written
and logged as artifacts of one MLflow run in experiment `frontier`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from compress.artifacts import write_json
from compress.errors import UserError
from compress.user_input import clip, quote


@dataclass
class Point:
    score: float
    gflops: float
    baseline_score: float
    baseline_gflops: float
    source: str


@dataclass
class Curve:
    label: str
    metric: str
    points: list[Point] = field(default_factory=list)


def parse_curve(spec: str) -> Curve:
    """`LABEL=PATH[,PATH...]` -> the curve's points, sorted by GFLOPs."""
    label, sep, paths = spec.partition("=")
    if not sep or not label.strip() or not paths.strip():
        raise UserError(f"curve {quote(spec)}: write LABEL=PATH[,PATH...] (sweep_<key>.json or summary.json)")
    curve = Curve(label.strip(), metric="")
    for path in (Path(p.strip()) for p in paths.split(",") if p.strip()):
        for metric, point in _read_points(path):
            if curve.metric and metric != curve.metric:
                raise UserError(f"{path}: its metric is {metric}, the curve's other points' {curve.metric}")
            curve.metric = metric
            curve.points.append(point)
    curve.points.sort(key=lambda point: point.gflops)
    return curve


def _read_points(path: Path) -> list[tuple[str, Point]]:
    try:
        payload = json.loads(path.read_text())
        if "rows" in payload:  # a sweep
            return [
                (
                    row["metric"],
                    Point(
                        row["score"], row["gflops"], row["baseline_score"], row["baseline_gflops"], str(path)
                    ),
                )
                for row in payload["rows"]
            ]
        final = payload["final"]  # a run's summary
        point = Point(
            final["value"], final["gflops"], final["baseline_value"], final["baseline_gflops"], str(path)
        )
        return [(final["metric"], point)]
    except OSError as error:
        raise UserError(f"{path}: cannot read it ({error.strerror})") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path}: not a sweep_<key>.json or a summary.json written by this tool") from None


def check_comparable(curves: list[Curve]) -> None:
    """One metric across the curves (they are drawn on one axis)."""
    metrics = {curve.metric for curve in curves}
    if len(metrics) > 1:
        raise UserError(
            f"the curves measure different metrics ({', '.join(sorted(metrics))}): one task per plot"
        )


def plot_frontier(curves: list[Curve], title: str, path: Path) -> None:
    """One line per curve (metric vs GFLOPs per example); each distinct baseline as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    baselines = set()
    for curve in curves:
        gflops = [point.gflops for point in curve.points]
        ax.plot(gflops, [point.score for point in curve.points], "o-", label=curve.label)
        baselines |= {(point.baseline_gflops, point.baseline_score) for point in curve.points}
    for number, (gflops, score) in enumerate(sorted(baselines)):
        ax.plot([gflops], [score], "k*", markersize=12, label="unpruned" if number == 0 else None)
    ax.set_xlabel("GFLOPs per example (dev set)")
    ax.set_ylabel(curves[0].metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_frontier(curves: list[Curve], out: Path) -> tuple[Path, Path]:
    """OUT (png) and its data beside it (OUT with .json); returns both paths."""
    check_comparable(curves)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = out.with_suffix(".json")
    write_json(data, {"curves": [asdict(curve) for curve in curves]})
    plot_frontier(curves, out.stem, out)
    return out, data


def log_frontier(paths: tuple[Path, ...], curves: list[Curve]) -> str:
    """An MLflow run in experiment `frontier` holding the plot and its data; returns its id."""
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import experiment_id, use_tracking_store

    uri = use_tracking_store()
    client = MlflowClient(uri)
    run = client.create_run(experiment_id(client, "frontier", uri), run_name=paths[0].stem)
    labels = "; ".join(f"{curve.label} ({len(curve.points)} points)" for curve in curves)
    client.log_param(run.info.run_id, "curves", clip(labels, 500))
    for path in paths:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id
