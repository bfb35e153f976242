"""ltp-compress command line: one function per command, each a thin call into the library."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from compress.errors import Stopped, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compress Hugging Face encoders: fine-tune, Learned Token Pruning, distil, quantise.",
)

SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: dotted.key=value")]
BENCH_FILES = ("bench.json", "models")  # what a bench leaves in its --out
DataDirOption = Annotated[
    str | None, typer.Option("--data-dir", help="GLUE-layout folder (else $GLUE_DIR, else hub)")
]


def _overrides(set_: list[str] | None, data_dir: str | None) -> list[str]:
    """--set overrides, with --data-dir as one more (data.dir=DIR)."""
    return [*(set_ or []), *([f"data.dir={data_dir}"] if data_dir else [])]


def _load(recipe_path: Path, set_: list[str] | None, data_dir: str | None):
    from compress.recipe import load_recipe

    return load_recipe(recipe_path, _overrides(set_, data_dir))


@app.command()
def validate(recipe: Path, set_: SetOption = None, data_dir: DataDirOption = None) -> None:
    """Check a recipe (keys, types, stage order, model and data paths) without running anything."""
    from compress.pipeline import preflight
    from pipelines.report import stage_list

    resolved = _load(recipe, set_, data_dir)
    preflight(resolved)
    typer.echo(f"{recipe}: ok: {resolved.task} on {resolved.model}: {stage_list(resolved)}")


@app.command()
def compress(
    recipe: Path,
    set_: SetOption = None,
    data_dir: DataDirOption = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default artifacts/<recipe name>)")] = None,
    until: Annotated[str | None, typer.Option(help="Stop after this stage (by name)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute every stage")] = False,
) -> None:
    """Run a recipe's stages (a Prefect flow, tracked in MLflow) and write OUT/summary.json.
    Under `accelerate launch --num_processes N` (or torchrun) the training stages run data
    parallel; the main process runs the flow."""
    from compress.accelerator import is_main_process, main_process_agrees, num_processes
    from pipelines.flow import check, compress_flow, output_dir
    from pipelines.report import print_summary, stage_list

    overrides = _overrides(set_, data_dir)
    if not is_main_process():
        _train_alongside(recipe, overrides, out, until, not no_cache)
        return
    try:
        resolved = check(recipe, overrides, until, check_data=True, out_dir=out)  # bad input: before training
    except UserError:
        main_process_agrees(False)
        raise
    main_process_agrees(True)
    if (processes := num_processes()) > 1:
        logging.getLogger("compress").info("data parallel: training stages run in %d processes", processes)
    out_dir = output_dir(resolved, out)
    typer.echo(f"{resolved.name}: {stage_list(resolved, until)}")
    summary = compress_flow(str(recipe), overrides, str(out_dir), until, not no_cache, checked=resolved)
    print_summary(summary)
    typer.echo(f"summary: {out_dir / 'summary.json'}")
    if summary["mlflow"]["model_uri"]:
        typer.echo(f"model: {summary['mlflow']['model_uri']} (tracking: {summary['mlflow']['tracking_uri']})")


def _train_alongside(
    recipe: Path, overrides: list[str], out: Path | None, until: str | None, use_cache: bool
) -> None:
    """A helper process of a data-parallel `compress`: quiet, and gone if the main one's checks
    fail; a mistake found in a stage is reported by the main process alone."""
    from compress.accelerator import main_process_agrees
    from compress.pipeline import train_alongside
    from compress.recipe import load_recipe
    from pipelines.flow import output_dir

    logging.getLogger().setLevel(logging.WARNING)  # the main process reports the run
    if not main_process_agrees(True):
        raise typer.Exit(2)  # the main process printed why
    try:
        resolved = load_recipe(recipe, overrides)
        train_alongside(resolved, output_dir(resolved, out), until, use_cache)
    except UserError:
        raise typer.Exit(2) from None


@app.command()
def serve(
    recipe: Path,
    set_: SetOption = None,
    data_dir: DataDirOption = None,
    cron: Annotated[str | None, typer.Option(help="Run on this schedule, e.g. '0 3 * * *'")] = None,
    name: Annotated[str | None, typer.Option(help="Deployment name (default: the recipe's name)")] = None,
) -> None:
    """Serve a recipe as the Prefect deployment compress/NAME (needs `prefect server start`)."""
    from pipelines.deploy import serve_recipe

    for signum in (signal.SIGINT, signal.SIGTERM):  # Prefect's serve shuts down on KeyboardInterrupt
        signal.signal(signum, signal.default_int_handler)
    serve_recipe(recipe, _overrides(set_, data_dir), name, cron)


@app.command()
def sweep(
    recipe: Path,
    key: Annotated[str, typer.Option(help="Recipe key to sweep, e.g. stages.ltp_soft.lambda")],
    values: Annotated[str, typer.Option(help="Comma-separated values, e.g. 0.01,0.02,0.05,0.1")],
    set_: SetOption = None,
    data_dir: DataDirOption = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default artifacts/<recipe>-sweep)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute every stage")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Local Dask workers (processes; cores split)")] = 1,
    address: Annotated[
        str | None, typer.Option(help="Existing Dask scheduler, e.g. tcp://HOST:8786 (instead of --workers)")
    ] = None,
) -> None:
    """Run a recipe once per value of KEY, each a Prefect task on Dask; write sweep_KEY.json and an
    accuracy-vs-GFLOPs plot (also on the sweep's MLflow run)."""
    from compress.paths import check_output_dir
    from pipelines.sweep import run_sweep, sweep_file, sweep_recipes

    points = [v.strip() for v in values.split(",") if v.strip()]
    recipes = sweep_recipes(recipe, key, points, _overrides(set_, data_dir))
    out_dir = check_output_dir(out or Path("artifacts") / f"{recipes[0].name}-sweep", ours=("stages",))
    result = run_sweep(
        recipes,
        key,
        points,
        out_dir,
        use_cache=not no_cache,
        workers=workers,
        address=address,
    )
    for row in result["rows"]:
        typer.echo(
            f"{key}={row['value']}: {row['metric']} {row['score']:.4f}, "
            f"{row['gflops']:.3f} GFLOPs ({row['gflops_reduction']:.2f}x fewer)"
        )
    typer.echo(f"plot: {sweep_file(out_dir, key, '.png')}")


@app.command()
def pull(
    model_uri: Annotated[str, typer.Argument(help="Registered model, e.g. models:/sst2_int8@champion")],
    out: Annotated[
        Path | None, typer.Option(help="Download folder (default artifacts/pulled/NAME@ALIAS)")
    ] = None,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Evaluate it on its recipe's dev set")] = False,
    bench_: Annotated[
        bool, typer.Option("--bench", help="Benchmark it (`bench` defaults) into OUT/bench")
    ] = False,
    set_: SetOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Download a registered model from MLflow (and evaluate and/or benchmark it on its recipe's dev set)."""
    from pipelines.registry import evaluate_artifact, pull_model

    out_dir = out or _pull_dir(model_uri)
    artifact = pull_model(model_uri, out_dir)
    typer.echo(f"{model_uri}: pulled to {out_dir}; model artifact: {artifact}")
    if evaluate:
        overrides = _overrides(set_, data_dir)
        result = evaluate_artifact(artifact, overrides)
        typer.echo(
            f"{result['metric']} = {result['value']:.4f} on {result['examples']} dev examples, "
            f"{result['gflops']:.4g} GFLOPs per example"
        )
    if bench_:
        bench(str(artifact), out=out_dir / "bench", data_dir=data_dir)


def _pull_dir(model_uri: str) -> Path:
    return Path("artifacts") / "pulled" / model_uri.removeprefix("models:/").replace("/", "_")


@app.command()
def bench(
    target: Annotated[
        str, typer.Argument(help="Recipe output folder, stage artifact, models:/NAME@ALIAS or random:ARCH")
    ],
    out: Annotated[Path | None, typer.Option(help="Output folder (default artifacts/bench/NAME)")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes")] = "1,8,32,128",
    threads: Annotated[int, typer.Option(help="CPU threads (torch.set_num_threads)")] = 2,
    rounds: Annotated[int, typer.Option(help="Timed passes per variant and batch size")] = 5,
    max_examples: Annotated[int | None, typer.Option(help="Time a seeded slice of the dev set")] = None,
    no_compile: Annotated[bool, typer.Option("--no-compile", help="Eager mode only")] = False,
    devices: Annotated[
        str | None, typer.Option(help="cpu,cuda or one of them (default: all present)")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Time the baseline, pruned and final models side by side; write bench.json, bench.md, bench.png."""
    from compress.bench.report import markdown_table, write_report
    from compress.bench.targets import resolve_target
    from compress.bench.timing import BenchSettings, run_bench
    from compress.paths import check_output_dir

    try:
        sizes = tuple(int(size) for size in batch_sizes.split(","))
    except ValueError:
        raise UserError(f"--batch-sizes: expected comma-separated integers, got {batch_sizes!r}") from None
    chosen = tuple(devices.split(",")) if devices else ()
    settings = BenchSettings(sizes, threads, rounds, compile=not no_compile, devices=chosen)
    slice_ = [] if max_examples is None else [f"data.max_eval_samples={max_examples}"]
    if target.startswith("random:"):
        name = target.replace(":", "-")
    elif target.startswith("models:/"):
        name = _pull_dir(target).name
    else:
        name = Path(target).resolve().name
    out = check_output_dir(out or Path("artifacts") / "bench" / name, ours=BENCH_FILES)
    overrides = _overrides(slice_, data_dir)
    if target.startswith("random:"):
        from compress.bench.random_target import random_target

        resolved = random_target(target, out / "models", overrides)
    else:
        folder = Path(target)
        if target.startswith("models:/"):
            from pipelines.registry import pull_model

            folder = pull_model(target, _pull_dir(target))
        resolved = resolve_target(folder, overrides)
    result = run_bench(resolved.baseline, resolved.pruned, resolved.final, resolved.recipe, settings)
    paths = write_report(result, out)
    typer.echo(markdown_table(result))
    typer.echo(f"bench: {paths['json']}, {paths['md']}, {paths['png']}")


@app.command()
def results(
    summaries: Annotated[list[Path], typer.Argument(help="Runs' summary.json files, one row each")],
    readme: Annotated[Path | None, typer.Option(help="Fill this file's results block instead")] = None,
) -> None:
    """The results table (markdown) of finished runs: metric, GFLOPs, BOPs and speed-ups."""
    from pipelines.report import replace_results, results_table

    table = results_table(summaries)
    if readme is None:
        typer.echo(table)
    else:
        replace_results(readme, table)
        typer.echo(f"{readme}: results table of {len(summaries)} runs")


@app.command()
def frontier(
    curves: Annotated[
        list[str], typer.Argument(help="LABEL=PATH[,PATH...]: a sweep_<key>.json or runs' summary.json files")
    ],
    out: Annotated[Path, typer.Option(help="The plot (PNG); its data goes beside it as .json")] = Path(
        "artifacts/frontier.png"
    ),
) -> None:
    """Accuracy against GFLOPs of several methods in one plot (e.g. budgeted LTP vs top-k sweeps),
    also logged to MLflow (experiment `frontier`)."""
    from pipelines.frontier import log_frontier, parse_curve, write_frontier

    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the plot is a PNG file (name it *.png)")
    parsed = [parse_curve(spec) for spec in curves]
    paths = write_frontier(parsed, out)
    log_frontier(paths, parsed)
    for curve in parsed:
        points = ", ".join(f"{p.score:.4f} at {p.gflops:.3f}" for p in curve.points)
        typer.echo(f"{curve.label}: {curve.metric} {points} GFLOPs")
    typer.echo(f"plot: {paths[0]}")


def _stop(signum: int, frame) -> None:
    raise Stopped(signum)


def _configure_logs() -> None:
    """INFO lines `time logger: message` on stderr, each once, without libraries' chatter; off a
    terminal (a log file) no progress bars: training logs one line per epoch instead."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("huggingface_hub", "datasets"):  # they print through a handler of their own, and
        logging.getLogger(name).propagate = False  # through ours: every hub retry would show twice
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # "generated new fontManager" (INFO)
    logging.getLogger("distributed").setLevel(logging.WARNING)  # a sweep's Dask cluster: a line per event
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # "building the font cache"
    if not sys.stderr.isatty():  # read by the libraries when they are imported or the bar is made
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars and the hub's
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user mistake becomes one line on stderr and exit code 2; Ctrl-C (SIGINT)
    and SIGTERM end it with one line and exit code 128 + the signal's number (130, 143)."""
    _configure_logs()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)
    try:
        app(args=argv, standalone_mode=False)
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        return 2
    except Stopped as stop:
        typer.echo(f"error: stopped by {stop}; finished stages are kept and a re-run resumes", err=True)
        return 128 + stop.signum
    except typer.Exit as done:
        return done.exit_code
    except typer.TyperException as error:  # usage errors: missing argument, unknown option
        typer.echo(f"error: {error.format_message()}", err=True)
        return getattr(error, "exit_code", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
