"""The stage registry: kind -> `run(config, inputs) -> StageResult`. Explicit, nothing discovered."""

from compress.stages import benchmark, distill, finetune, ltp_hard, ltp_soft, quantize, topk
from compress.stages.base import StageInputs, StageResult

STAGES = {
    "finetune": finetune.run,
    "ltp_soft": ltp_soft.run,
    "ltp_hard": ltp_hard.run,
    "topk": topk.run,
    "distill": distill.run,
    "quantize": quantize.run,
    "benchmark": benchmark.run,
}

__all__ = ["STAGES", "StageInputs", "StageResult"]
