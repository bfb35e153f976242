"""`make gpu-check`: everything that needs a GPU, in one command, into one JSON file and one log.

    python -m pipelines.gpu_check [--out DIR]        (make gpu-check: DIR is gpu-check/)

Without CUDA it stops at once: one line, exit code 2. With a GPU, in about 8 minutes on one
H100/H200, each step a separate process whose output goes to DIR/gpu_check.log:

1. `tests`: the CUDA tests (`pytest -m gpu`: the varlen Triton kernel, training through
   accelerate in bf16, ONNX Runtime's CUDA provider where installed);
2. `quickstart`: recipes/quickstart.yaml trained on the GPU (`mixed_precision: auto`, so bf16),
   each training stage's examples/s beside the CPU figure in results/quickstart_cpu.json;
3. `bench_roberta_base`, `bench_minilm`: `cli.py bench random:ARCH --devices cuda` (the pruned
   model's varlen kernel rows and their `attention_kernel_share`).

DIR/gpu_check.json holds each step's exit code, seconds and figures; commit it as
results/gpu_check.json. The exit code is 1 if a step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_REFERENCE = REPO / "results" / "quickstart_cpu.json"
STEP_TIMEOUT_S = 600


def steps(out: Path) -> dict[str, list[str]]:
    cli = [sys.executable, str(REPO / "cli.py")]
    bench = ["--devices", "cuda", "--batch-sizes", "1,32,128", "--rounds", "3", "--no-compile"]
    return {
        "tests": [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
        "quickstart": [*cli, "compress", "recipes/quickstart.yaml", "--out", str(out / "quickstart")],
        "bench_roberta_base": [*cli, "bench", "random:roberta-base", "--out", str(out / "roberta"), *bench],
        "bench_minilm": [*cli, "bench", "random:minilm", "--out", str(out / "minilm"), *bench],
    }


def run_step(command: list[str], log, env: dict[str, str]) -> dict:
    log.write(f"\n$ {' '.join(command)}\n")
    log.flush()
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=STEP_TIMEOUT_S
        )
        code = done.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    return {"returncode": code, "seconds": round(time.perf_counter() - started, 1)}


def quickstart_figures(out: Path) -> dict:
    """Training examples/s of each stage on the GPU, and the CPU reference's where present."""
    summary = json.loads((out / "quickstart" / "summary.json").read_text())
    cpu = json.loads(CPU_REFERENCE.read_text()) if CPU_REFERENCE.is_file() else {"stages": []}
    cpu_rates = {s["name"]: s["metrics"].get("train_examples_per_s") for s in cpu["stages"]}
    rows = {}
    for stage in summary["stages"]:
        rate = stage["metrics"].get("train_examples_per_s")
        if rate:
            reference = cpu_rates.get(stage["name"])
            rows[stage["name"]] = {
                "gpu_examples_per_s": rate,
                "cpu_examples_per_s": reference,
                "speedup": round(rate / reference, 2) if reference else None,
            }
    return {"final": summary["final"], "training": rows}


def bench_figures(folder: Path) -> list[dict]:
    rows = json.loads((folder / "bench.json").read_text())["results"]
    keys = ("variant", "engine", "device", "dtype", "batch_size", "seq_per_s", "p50_ms")
    keys += ("attention_kernel_share",)
    return [{key: row.get(key) for key in keys} for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "gpu-check")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("error: gpu-check needs a CUDA GPU; torch finds none on this machine", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}", "HF_HUB_OFFLINE": "1"}
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "steps": {},
    }
    with open(out / "gpu_check.log", "w") as log:
        for name, command in steps(out).items():
            report["steps"][name] = run_step(command, log, env)
            print(f"{name}: {report['steps'][name]}", flush=True)
    figures = {
        "quickstart": lambda: quickstart_figures(out),
        "bench_roberta_base": lambda: bench_figures(out / "roberta"),
        "bench_minilm": lambda: bench_figures(out / "minilm"),
    }
    for name, read in figures.items():
        if report["steps"][name]["returncode"] == 0:
            report["steps"][name]["figures"] = read()
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {out / 'gpu_check.json'} (commit it as results/gpu_check.json)")
    print(f"log: {out / 'gpu_check.log'}")
    return 0 if all(step["returncode"] == 0 for step in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
