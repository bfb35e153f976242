"""Throughput of the unpruned baseline, the pruned model and the quantised final model, side by side.

One run times every variant on the task's dev set (the recipe's first eval split), batches cut
from examples sorted by length (longest first), in the same order for every variant (DESIGN §5):

    baseline   the unpruned fine-tuned model: the plain Hugging Face forward, fp32
    pruned     the pruned float model, tokens really dropped (`compress.bench.fast_path.PackedPruner`)
    final      the pruned + quantised model (int8 linear layers), same fast path; a final
               artifact of ONNX Runtime (quantize `engine: onnxruntime`) runs its own graph

each in eager mode and under torch.compile (dynamic shapes), on CPU (fp32; int8 for `final`) and,
where CUDA is present, on the GPU (fp32 and bf16; int8 for `final`); `engine` "torch". Beside them,
`engine` "onnxruntime" (`compress.onnx_runtime`): the baseline as a user deploys it without us
(exported, ONNX Runtime's transformer optimizer, fp32 and dynamic int8) and the pruned float model
exported with its token dropping, fp32 and int8; on CPU and, where ONNX Runtime has the CUDA
execution provider, on the GPU. Their batches are turned into numpy inputs before the timing;
`export_s` is what export, optimisation, quantisation and the session's creation took.

Per device and batch size: a warm-up pass per runner (compilation included, reported apart as
`compile_s`), then `rounds` timed passes with all runners in alternating order (on the GPU each
batch ends with a sync). A row reports the median sequences/s over the rounds (with the slowest and
fastest round), the p50/p90 latency of one batch over every timed batch, and GFLOPs per example
from the real kept-token counts (`compress.flops`). ONNX Runtime rows give `agreement`: the share
of dev examples whose predicted class (argmax) is the torch fp32 eager model's (same variant; for
a final model of ONNX Runtime, the pruned model's).

Torch CPU rows also give `matmul_ms` (None on ONNX Runtime rows: the profiler cannot see inside
it): milliseconds per batch inside matrix multiplications (linear layers, attention matmuls; the
baseline's fused SDPA kernel counts whole), from one pass under the profiler over up to 64 batches
spread over the dev set (the same ones for every variant), and `matmul_speedup` compares it with
the baseline's. The whole model's speed-up lies between `matmul_speedup` and the speed-up of
everything else, so where the matmuls take most of the time and speed up less than the FLOPs
shrink (a GEMM of a few rows runs at a lower rate than one of many), that is where the efficiency
is lost. Torch GPU rows of the pruned and final models give `attention_kernel_share`: the share of
their GPU kernel time spent in the fused attention + importance kernel (one profiled pass).

Ratios (DESIGN §3): `speedup` and `flops_reduction` are against the baseline of the same device,
dtype, compile setting and batch size, and `efficiency` = speedup / flops_reduction. There is no
int8 baseline: the int8 `final` rows are compared against the fp32 baseline (`baseline_dtype`
says so), so their speedup includes what int8 brings. `speedup_vs_fp32_eager` compares every
row with the fp32 baseline in eager mode at the same batch size (the issue's target: final,
compiled, batch 32, >= 5x). ONNX Runtime rows take `speedup`, `flops_reduction` and `efficiency`
against that torch fp32 eager baseline too. `speedup_vs_ort_int8`, on every row, compares it with
the ONNX Runtime int8 baseline of the same device and batch size, the product's claim (None where
ONNX Runtime did not run on that device).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from compress.bench.profile import attention_kernel_share, machine_info, matmul_ms
from compress.bench.runners import DTYPE_NAMES, Runner, make_runner, models_on, onnx_runners, session_runner
from compress.data.batching import make_loader
from compress.data.task_data import prepare_data
from compress.errors import UserError
from compress.evaluate import model_inputs
from compress.flops import cost_from_config
from compress.models import load_tokenizer
from compress.onnx_model import OnnxModel
from compress.recipe import Recipe
from compress.training import show_progress

log = logging.getLogger(__name__)


@dataclass
class BenchSettings:
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128)
    threads: int = 2  # torch.set_num_threads for the run (restored afterwards)
    rounds: int = 5  # timed passes over the dev set per runner and batch size
    compile: bool = True  # also time every variant under torch.compile
    devices: tuple[str, ...] = ()  # default: cpu, and cuda where present

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UserError(f"batch sizes: expected positive integers, got {list(self.batch_sizes)}")
        if self.threads < 1 or self.rounds < 1:
            raise UserError(f"threads and rounds must be positive (got {self.threads}, {self.rounds})")
        if not self.devices:
            self.devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
        unknown = sorted(set(self.devices) - {"cpu", "cuda"})
        if unknown:
            raise UserError(f"devices: unknown device {unknown[0][:40]!r} (expected cpu and/or cuda)")
        if "cuda" in self.devices and not torch.cuda.is_available():
            raise UserError("devices: cuda was asked for, but this machine has no CUDA GPU (use cpu)")


def run_bench(
    baseline: str,
    pruned: str | None,
    final: str | None,
    recipe: Recipe,
    settings: BenchSettings,
    onnx_dir: Path | None = None,
) -> dict:
    """Time the variants on the recipe's dev set; returns the bench.json payload (DESIGN §3).
    The ONNX exports go to `onnx_dir` (kept), else to a temporary folder."""
    with contextlib.ExitStack() as stack:
        stack.callback(torch.set_num_threads, torch.get_num_threads())
        torch.set_num_threads(settings.threads)
        if onnx_dir is None:
            onnx_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-onnx-")))
        onnx_dir.mkdir(parents=True, exist_ok=True)
        task_data = prepare_data(recipe, load_tokenizer(pruned or final or baseline), need_train=False)
        task = task_data.task
        split, examples = next(iter(task_data.evals.items()))
        models = {"baseline": baseline, "pruned": pruned, "final": final}
        runners, float_models = [], {}
        for variant, name in models.items():
            for device in settings.devices if name else ():
                for model in models_on(name, device, task):
                    if isinstance(model, OnnxModel):  # a final artifact of ONNX Runtime: its own graph
                        runners.append(
                            session_runner(
                                variant, model.path, model.config, "int8", device, settings.threads
                            )
                        )
                        continue
                    for compiled in (False, True) if settings.compile else (False,):
                        runners.append(make_runner(variant, model, compiled))
                    if variant != "final":
                        float_models.setdefault(variant, model)  # the first: fp32
        example = model_inputs(
            next(iter(make_loader(examples, 2, task_data.pad_token_id, False, recipe.seed)))
        )
        runners += onnx_runners(float_models, example, settings, onnx_dir)
        rows = []
        for batch_size in settings.batch_sizes:
            loader = make_loader(examples, batch_size, task_data.pad_token_id, False, recipe.seed)
            batches = [model_inputs(batch) for batch in loader]
            for device in settings.devices:
                on_device = [{key: value.to(device) for key, value in batch.items()} for batch in batches]
                rows += time_runners([r for r in runners if r.device == device], on_device, settings.rounds)
    return {
        "machine": machine_info(settings.threads),
        "task": task.name,
        "split": split,
        "examples": len(examples),
        "models": models,
        "settings": {
            **asdict(settings),
            "batch_sizes": list(settings.batch_sizes),
            "devices": list(settings.devices),
        },
        "results": add_ratios(rows),
    }


def time_runners(runners: list[Runner], batches: list[dict], rounds: int) -> list[dict]:
    """One row per runner: warm-up pass (counts tokens, compiles), then `rounds` alternating passes."""
    examples = sum(len(batch["input_ids"]) for batch in batches)
    bar = tqdm(  # passes per runner: warm-up, rounds, the profiled one; updated between passes only
        total=len(runners) * (rounds + 2),
        desc=f"bench {runners[0].device} batch {len(batches[0]['input_ids'])}",
        unit="pass",
        dynamic_ncols=True,
        leave=False,
        disable=not show_progress(),  # off a terminal, the rows logged below say what was timed
    )
    inputs = [[runner.prepare(batch) for batch in batches] for runner in runners]
    warmup, gflops, predicted = [], [], []
    for runner, inputs_ in zip(runners, inputs, strict=True):
        bar.set_postfix_str(_label(runner) + " (warm-up)")
        started = time.perf_counter()
        outputs = [runner.forward(input_) for input_ in inputs_]
        warmup.append(time.perf_counter() - started)
        bar.update()
        logits, tokens_in, tokens_kept = (torch.cat(o) for o in zip(*outputs, strict=True))
        gflops.append(cost_from_config(runner.config, tokens_in, tokens_kept).gflops)
        predicted.append(logits.argmax(dim=-1).cpu())
    latencies: list[list[float]] = [[] for _ in runners]
    totals: list[list[float]] = [[] for _ in runners]
    with torch.compiler.set_stance("fail_on_recompile"):  # every shape was compiled in the warm-up
        for round_ in range(rounds):
            order = range(len(runners)) if round_ % 2 == 0 else reversed(range(len(runners)))
            for index in order:
                bar.set_postfix_str(f"{_label(runners[index])} (round {round_ + 1})")
                times = _time_pass(runners[index], inputs[index])
                latencies[index] += times
                totals[index].append(sum(times))
                bar.update()
    agreement = _agreement(runners, predicted)
    rows = []
    for runner, warm, flops, lat, total, agree in zip(
        runners, warmup, gflops, latencies, totals, agreement, strict=True
    ):
        median = statistics.median(total)
        rows.append(
            {
                "variant": runner.variant,
                "engine": runner.engine,
                "device": runner.device,
                "dtype": runner.dtype,
                "compiled": runner.compiled,
                "batch_size": len(batches[0]["input_ids"]),
                "seq_per_s": round(examples / median, 2),
                "seq_per_s_min": round(examples / max(total), 2),
                "seq_per_s_max": round(examples / min(total), 2),
                "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
                "p90_ms": round(float(np.percentile(lat, 90)) * 1e3, 3),
                "gflops": round(flops, 6),
                "compile_s": round(max(warm - median, 0.0), 2) if runner.compiled else None,
                "export_s": runner.export_s,
            }
        )
        bar.set_postfix_str(_label(runner) + " (profiled)")
        if runner.engine == "onnxruntime":
            rows[-1].update(matmul_ms=None, agreement=agree)
        elif runner.device == "cpu":
            rows[-1]["matmul_ms"] = matmul_ms(runner, batches)
        elif runner.variant != "baseline":
            rows[-1]["attention_kernel_share"] = attention_kernel_share(runner, batches)
        bar.update()
    bar.close()
    for row in rows:
        log.info("%s", _describe(row))
    return rows


def _label(runner: Runner) -> str:
    mode = "onnxruntime" if runner.engine == "onnxruntime" else "compiled" if runner.compiled else "eager"
    return f"{runner.variant} {runner.dtype} {mode}"


def _agreement(runners: list[Runner], predicted: list[torch.Tensor]) -> list[float | None]:
    """Per ONNX Runtime runner: the share of examples whose argmax is that of the torch fp32 eager
    runner of the same variant (for a final model: of the pruned one it was made from); None for
    the others, for regression, and without such a runner."""
    reference = {
        r.variant: p
        for r, p in zip(runners, predicted, strict=True)
        if (r.engine, r.dtype, r.compiled) == ("torch", "fp32", False)
    }
    shares = []
    for runner, labels in zip(runners, predicted, strict=True):
        theirs = reference.get("pruned" if runner.variant == "final" else runner.variant)
        regression = runner.config.num_labels == 1
        useful = runner.engine == "onnxruntime" and theirs is not None and not regression
        shares.append(round((labels == theirs).float().mean().item(), 4) if useful else None)
    return shares


def _time_pass(runner: Runner, inputs: list) -> list[float]:
    sync = torch.cuda.synchronize if runner.device == "cuda" else lambda: None
    times = []
    sync()
    for input_ in inputs:
        started = time.perf_counter()
        runner.forward(input_)
        sync()
        times.append(time.perf_counter() - started)
    return times


def add_ratios(rows: list[dict]) -> list[dict]:
    """speedup, flops_reduction, efficiency (and on CPU matmul_speedup) against the torch baseline of the
    same device, dtype (fp32 for int8), compile setting and batch size (ONNX Runtime rows: the fp32
    eager one); speedup_vs_fp32_eager against the torch fp32 eager baseline; speedup_vs_ort_int8
    against the ONNX Runtime int8 baseline of the same device and batch size."""
    key = ("engine", "device", "dtype", "compiled", "batch_size")
    baselines = {tuple(r[k] for k in key): r for r in rows if r["variant"] == "baseline"}
    for row in rows:
        dtype = row["dtype"] if row["dtype"] in DTYPE_NAMES.values() else "fp32"
        eager = baselines[("torch", row["device"], "fp32", False, row["batch_size"])]
        own = ("torch", row["device"], dtype, row["compiled"], row["batch_size"])
        base = baselines[own] if row["engine"] == "torch" else eager
        peer = baselines.get(("onnxruntime", row["device"], "int8", False, row["batch_size"]))
        speedup = row["seq_per_s"] / base["seq_per_s"]
        reduction = base["gflops"] / row["gflops"]
        row.update(
            baseline_dtype=base["dtype"],
            speedup=round(speedup, 4),
            flops_reduction=round(reduction, 4),
            efficiency=round(speedup / reduction, 4),
            speedup_vs_fp32_eager=round(row["seq_per_s"] / eager["seq_per_s"], 4),
            speedup_vs_ort_int8=round(row["seq_per_s"] / peer["seq_per_s"], 4) if peer else None,
        )
        if row.get("matmul_ms") and base.get("matmul_ms"):
            row["matmul_speedup"] = round(base["matmul_ms"] / row["matmul_ms"], 4)
    return rows


def _describe(row: dict) -> str:
    mode = "onnxruntime" if row["engine"] == "onnxruntime" else "compiled" if row["compiled"] else "eager"
    return (
        f"{row['variant']} {row['device']} {row['dtype']} {mode} batch {row['batch_size']}: "
        f"{row['seq_per_s']:.1f} seq/s, p50 {row['p50_ms']:.2f} ms, {row['gflops']:.3f} GFLOPs"
    )
