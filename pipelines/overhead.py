"""What orchestration costs: a recipe run directly, through the Prefect flow + MLflow, and cached.

    python -m pipelines.overhead RECIPE [--set dotted.key=value ...] [--out DIR]

Into DIR (default artifacts/<recipe name>-overhead), three wall times:
`direct_s`: the stages through `compress.pipeline.run_pipeline`, no cache, into DIR/direct (no
Prefect, no MLflow); `flow_s`: `compress_flow` as `cli.py compress --no-cache` runs it (the
checked recipe, Prefect tasks, MLflow runs, model registration) into DIR/flow; `cached_s`: the
flow again, every stage reused. `overhead_pct` = (flow_s - direct_s) / direct_s * 100. `check_s`: the checks
`cli.py compress` makes first (data, stores), which start Prefect's temporary local API when
PREFECT_API_URL is unset. Runs are tracked in DIR/mlflow.db unless MLFLOW_TRACKING_URI is set.
Prints the result and writes DIR/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path


def measure(recipe_path: Path, overrides: list[str], out: Path) -> dict:
    """The three wall times and the overhead; nothing is reused between the first two runs."""
    from compress.pipeline import run_pipeline
    from pipelines.flow import check, compress_flow
    from pipelines.servers import prefect_api_url
    from pipelines.tracking import tracking_uri

    started = time.perf_counter()
    recipe = check(recipe_path, overrides, None, check_data=True)
    times = {"check_s": _since(started)}
    started = time.perf_counter()
    run_pipeline(recipe, out / "direct", use_cache=False)
    times["direct_s"] = _since(started)
    for label, use_cache in (("flow_s", False), ("cached_s", True)):
        started = time.perf_counter()
        compress_flow(str(recipe_path), overrides, str(out / "flow"), None, use_cache, checked=recipe)
        times[label] = _since(started)
    return {
        "recipe": recipe.name,
        "stages": [stage.name for stage in recipe.stages],
        **times,
        "overhead_pct": round((times["flow_s"] - times["direct_s"]) / times["direct_s"] * 100, 2),
        "prefect_api": prefect_api_url() or "temporary local API (started in check_s)",
        "tracking_uri": tracking_uri(),
    }


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.overhead", description=__doc__.split("\n")[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="dotted.key=value")
    parser.add_argument("--out", type=Path, help="Output folder (default artifacts/<recipe name>-overhead)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from compress.errors import UserError
    from compress.recipe import load_recipe

    try:
        out = args.out or Path("artifacts") / f"{load_recipe(args.recipe, args.overrides).name}-overhead"
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out.resolve() / 'mlflow.db'}")
        result = measure(args.recipe, args.overrides, out)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    (out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['recipe']}: direct {result['direct_s']:.1f} s, flow {result['flow_s']:.1f} s "
        f"(+{result['overhead_pct']:.1f}%), cached flow {result['cached_s']:.1f} s -> {out / 'overhead.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
