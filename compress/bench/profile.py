"""Where a benchmark's time goes, and on what: profiled matmul time (CPU), the fused attention
kernel's share (GPU), and the machine a bench ran on.

`matmul_ms` runs one pass under torch.profiler over up to `PROFILED_BATCHES` batches spread over
the dev set and sums the self time of the matrix multiplications; `attention_kernel_share` does
the same for the CUDA kernels. Both take a runner's `forward` and its batches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys

import cpuinfo
import torch

log = logging.getLogger(__name__)

# The profiler's cost grows with the op count: at batch 1 a full pass would take longer than the timing.
PROFILED_BATCHES = 64
# Matrix multiplications as the CPU profiler names them: eager and inductor's extern kernels, torchao
# int8 (`_int_mm`), oneDNN linear layers, and PyTorch's fused attention (its softmax included).
_CPU_MATMUL_OPS = frozenset(
    {
        "aten::addmm",
        "aten::mm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::_int_mm",
        "onednn::qlinear_pointwise",
        "mkldnn::_linear_pointwise",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
    }
)


def matmul_ms(runner, batches: list[dict]) -> float:
    """Milliseconds per batch spent in matrix multiplications (self CPU time), from a profiled pass
    over up to `PROFILED_BATCHES` batches spread evenly over the sorted dev set."""
    sample = batches[:: -(-len(batches) // PROFILED_BATCHES)]
    events = _profiled_pass(runner, sample, torch.profiler.ProfilerActivity.CPU)
    spent = sum(e.self_cpu_time_total for e in events if e.key in _CPU_MATMUL_OPS)
    return round(spent / 1e3 / len(sample), 4)


def attention_kernel_share(runner, batches: list[dict]) -> float | None:
    """Share of a pass's GPU kernel time spent in the fused attention + importance kernel
    (`compress.bench.varlen_attention`), from the CUDA profiler; None when the runner does not use it."""
    events = _profiled_pass(runner, batches, torch.profiler.ProfilerActivity.CUDA)
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    fused = sum(e.self_device_time_total for e in kernels if "_attention_importance" in e.key)
    total = sum(e.self_device_time_total for e in kernels)
    return round(fused / total, 4) if fused else None


def _profiled_pass(runner, batches: list[dict], activity) -> list:
    """One pass over the batches under torch.profiler; its events averaged per op (or kernel) name."""
    with _native_stderr_silenced(), torch.profiler.profile(activities=[activity]) as profiler:
        for batch in batches:
            runner.forward(batch)
        if runner.device == "cuda":
            torch.cuda.synchronize()
    return profiler.key_averages()


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 to /dev/null meanwhile: torch 2.13's profiler (kineto) prints two lines to
    it from C++ at every start and stop, which no setting turns off."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def machine_info(threads: int) -> dict:
    """The CPU model (py-cpuinfo), the thread count used, the GPU name or None; library versions."""
    import onnxruntime
    import torchao
    import transformers

    return {
        "cpu": _cpu_name(),
        "threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torchao": torchao.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _cpu_name() -> str:
    """The CPU's model name from py-cpuinfo; the platform's processor string if that fails."""
    try:
        name = cpuinfo.get_cpu_info().get("brand_raw")
    except Exception as error:  # py-cpuinfo probes each OS its own way; any failure has the fallback
        log.warning("py-cpuinfo could not read the CPU model (%s); using the platform's name", error)
        name = None
    return name or platform.processor() or platform.machine() or "unknown"
