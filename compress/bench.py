"""Throughput of the unpruned baseline, the pruned model and the quantised final model, side by side.

One run times every variant on the task's dev set (the recipe's first eval split), batches cut
from examples sorted by length (longest first), in the same order for every variant (DESIGN §5):

    baseline   the unpruned fine-tuned model: the plain Hugging Face forward, fp32
    pruned     the pruned float model, tokens really dropped (`compress.fast_path.PackedPruner`)
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
import copy
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from compress import data, onnx_runtime
from compress.bench_profile import attention_kernel_share, machine_info, matmul_ms
from compress.errors import UserError
from compress.evaluate import model_inputs
from compress.fast_path import PackedPruner
from compress.flops import cost_from_config
from compress.ltp import PRUNING_FILE, PrunableModel
from compress.models import load_model, load_tokenizer
from compress.onnx_model import OnnxModel
from compress.quantize import PRECISION, QUANTIZATION_FILE
from compress.recipe import Recipe, load_recipe
from compress.task_data import prepare_data
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


@dataclass
class BenchTarget:
    """The models a bench compares, and the recipe naming their task and data."""

    recipe: Recipe
    baseline: str  # the unpruned fine-tuned model: artifact dir, path or hub id
    pruned: str | None  # the last float pruned artifact
    final: str | None  # the quantised artifact


def resolve_target(target: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> BenchTarget:
    """What to compare for TARGET: a recipe output folder (summary.json) or a stage artifact directory.

    Recipe folder: its stages' artifacts. Stage directory: the stages of its recipe.yaml up to it,
    found as sibling directories. Baseline = the finetune stage's artifact, else a distill stage's
    named teacher, else the recipe's `model` (as in summary.json); pruned = the last float artifact
    with pruning.json, else the recipe's `model` when it has one; final = the last quantised artifact.
    """
    path = Path(target)
    if (path / "summary.json").is_file():
        recipe = load_recipe(path / "recipe.yaml", overrides)
        stages = json.loads((path / "summary.json").read_text())["stages"]
        chain = [(stage["kind"], Path(stage["artifact"])) for stage in stages]
    elif (path / "recipe.yaml").is_file() and (path / "config.json").is_file():
        recipe = load_recipe(path / "recipe.yaml", overrides)
        names = [stage.name for stage in recipe.stages]
        before = recipe.stages[: names.index(path.name)] if path.name in names else []
        chain = [(stage.kind, path.parent / stage.name) for stage in before] + [(None, path)]
    else:
        raise UserError(
            f"bench target {str(target)!r}: not a recipe output folder (summary.json) "
            "nor a stage artifact (recipe.yaml + config.json)"
        )
    return select_models(recipe, chain, f"bench target {str(target)!r}")


def select_models(recipe: Recipe, chain: list[tuple[str | None, Path]], source: str) -> BenchTarget:
    """Baseline, pruned and final model among a recipe's stage artifacts (kind, folder), in order."""
    chain = [(kind, folder) for kind, folder in chain if (folder / "config.json").is_file()]
    quantized = [folder for _, folder in chain if (folder / QUANTIZATION_FILE).is_file()]
    pruned = [f for _, f in chain if (f / PRUNING_FILE).is_file() and f not in quantized]
    if not pruned and (Path(recipe.model) / PRUNING_FILE).is_file():
        pruned = [Path(recipe.model)]
    if not pruned and not quantized:
        raise UserError(f"{source}: no pruned or quantised model to compare")
    fallback = recipe.named_teacher() or recipe.model
    baseline = next((str(folder) for kind, folder in chain if kind == "finetune"), fallback)
    return BenchTarget(
        recipe,
        baseline,
        str(pruned[-1]) if pruned else None,
        str(quantized[-1]) if quantized else None,
    )


def _as_is(batch: dict) -> dict:
    return batch


@dataclass
class Runner:
    """One timed variant: input -> logits (B, C), tokens entering and kept per example and layer (B, L)."""

    variant: str
    device: str
    dtype: str
    compiled: bool
    config: object  # the Hugging Face config, for GFLOPs
    forward: Callable[[object], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    engine: str = "torch"
    prepare: Callable[[dict], object] = _as_is  # a batch to the forward's input, before the timing
    export_s: float | None = None


def make_runner(variant: str, model: PrunableModel, compiled: bool) -> Runner:
    """The plain Hugging Face forward for an unpruned model (or the baseline), else the packed fast path."""
    parameter = model.hf_model.base_model.embeddings.word_embeddings.weight
    quantized = model.quantization and f"int{PRECISION[model.quantization].weight_bits}"
    dtype = quantized or _DTYPE_NAMES[parameter.dtype]
    if variant == "baseline" or model.spec is None:
        hf_model = torch.compile(model.hf_model, dynamic=True) if compiled else model.hf_model

        @torch.inference_mode()
        def forward(batch: dict):
            logits = hf_model(**batch).logits
            counts = batch["attention_mask"].sum(dim=1, keepdim=True).expand(-1, model.num_layers)
            return logits, counts, counts

    else:
        pruner = PackedPruner(model, compiled=compiled)

        def forward(batch: dict):  # inference mode inside
            out = pruner(**batch)
            return out.logits, out.tokens_in, out.tokens_kept

    return Runner(variant, parameter.device.type, dtype, compiled, model.config, forward)


_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def onnx_runners(models: dict[str, PrunableModel], example: dict, settings, folder: Path) -> list[Runner]:
    """ONNX Runtime runners of float models (baseline, pruned), fp32 and int8, on CPU and, where ONNX
    Runtime has the CUDA execution provider, on the GPU; `example` traces the export into `folder`."""
    devices = [d for d in settings.devices if d == "cpu" or onnx_runtime.cuda_available()]
    if len(devices) < len(settings.devices):
        log.warning("ONNX Runtime has no CUDA execution provider here: no ONNX Runtime rows on the GPU")
    runners = []
    for variant, model in models.items() if devices else ():
        source = model if model.hf_model.device.type == "cpu" else copy.deepcopy(model).cpu()
        if variant == "baseline" and source.spec is not None:  # unpruned, as the torch baseline runs it
            source = PrunableModel(source.hf_model).eval()
        started = time.perf_counter()
        fp32 = onnx_runtime.export_onnx(source, folder / f"{variant}.onnx", example)
        exported = time.perf_counter() - started
        int8 = onnx_runtime.quantize_int8(fp32, folder / f"{variant}_int8.onnx")
        quantized = time.perf_counter() - started
        for device in devices:
            for dtype, path, spent in (("fp32", fp32, exported), ("int8", int8, quantized)):
                runners.append(
                    session_runner(variant, path, model.config, dtype, device, settings.threads, spent)
                )
    return runners


def session_runner(
    variant: str, path: Path, config, dtype: str, device: str, threads: int, export_s: float = 0.0
) -> Runner:
    """A runner of the ONNX graph at `path` in a session of its own (`threads` intra-op threads);
    `export_s`: what making the graph took, the session's creation added."""
    started = time.perf_counter()
    session = onnx_runtime.make_session(path, threads, device)
    return Runner(
        variant,
        device,
        dtype,
        False,
        config,
        partial(onnx_runtime.run_session, session),
        engine="onnxruntime",
        prepare=partial(onnx_runtime.session_feed, session),
        export_s=round(export_s + time.perf_counter() - started, 2),
    )


def _models_on(name: str, device: str, task) -> list[PrunableModel | OnnxModel]:
    """The model on `device`: as saved on CPU; on CUDA also in bf16 unless it is quantised (an ONNX
    Runtime artifact: on CUDA only where ONNX Runtime has its CUDA execution provider).

    Only the Hugging Face weights change dtype: the thresholds stay fp32, as the scores are.
    """
    model = load_model(name, task.num_labels, task.is_regression)
    if device == "cpu" or isinstance(model, OnnxModel) and onnx_runtime.cuda_available():
        return [model]
    if isinstance(model, OnnxModel):
        return []
    if model.int8_attention:  # torch._int_mm on CUDA wants more than 16 rows: short sequences have fewer
        log.warning("%s: int8 attention is timed on CPU only", name)
        return []
    models = [model.to(device)]
    if not model.quantization:
        half = copy.deepcopy(model)
        half.hf_model.to(torch.bfloat16)
        models.append(half)
    return models


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
                for model in _models_on(name, device, task):
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
            next(iter(data.make_loader(examples, 2, task_data.pad_token_id, False, recipe.seed)))
        )
        runners += onnx_runners(float_models, example, settings, onnx_dir)
        rows = []
        for batch_size in settings.batch_sizes:
            loader = data.make_loader(examples, batch_size, task_data.pad_token_id, False, recipe.seed)
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
        dtype = row["dtype"] if row["dtype"] in _DTYPE_NAMES.values() else "fp32"
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
