"""The attention matmuls (QK^T and AV) in int8: both operands quantised, int8 x int8 -> int32.

torchao quantises linear layers, whose weights are static. Attention multiplies two activations,
so both operands get dynamic symmetric scales here, one per token, so that a token's numbers never
depend on which other tokens are padded, pruned or masked (dropping and masking stay equal):

    QK^T: Q per query and K per key; the int32 product dequantises with the outer product.
    AV:   V per key; that scale is folded into the probabilities (P diag(s) . V/s = P V), which
          are then quantised per query. The probabilities lie in [0, 1]: 7 of the 8 bits.

The importance scores come from the float probabilities: the thresholds see what they were
trained on. `torch._int_mm` (oneDNN int8 GEMM on CPU) is 2-D only; the batch and head dimensions
are a Python loop, which at these sizes costs about what one batched fp32 matmul does.
"""

from __future__ import annotations

import torch


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row (last dimension): the int8 tensor and its float scales (..., n, 1)."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp_min(1e-12) / 127
    return torch.round(x.float() / scale).clamp(-127, 127).to(torch.int8), scale


@torch.compiler.disable  # a loop over a data-dependent batch: runs eagerly inside compiled graphs
def _int8_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., m, k) int8 @ (..., k, n) int8 -> (..., m, n) int32."""
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    pairs = zip(a.reshape(-1, m, k), b.reshape(-1, k, n), strict=True)
    return torch.stack([torch._int_mm(left, right) for left, right in pairs]).view(*a.shape[:-2], m, n)


def attention_scores(q: torch.Tensor, k: torch.Tensor, int8: bool) -> torch.Tensor:
    """q @ k^T: (..., n, dh) x (..., n, dh) -> (..., n, n)."""
    if not int8:
        return q @ k.transpose(-1, -2)
    q_int, q_scale = quantize_int8(q)
    k_int, k_scale = quantize_int8(k)
    product = _int8_bmm(q_int, k_int.transpose(-1, -2).contiguous())
    return (product * q_scale * k_scale.transpose(-1, -2)).to(q.dtype)


def attention_context(probs: torch.Tensor, v: torch.Tensor, int8: bool) -> torch.Tensor:
    """probs @ v: (..., n, n) x (..., n, dh) -> (..., n, dh)."""
    if not int8:
        return probs @ v
    v_int, v_scale = quantize_int8(v)
    p_int, p_scale = quantize_int8(probs * v_scale.transpose(-1, -2))
    return (_int8_bmm(p_int, v_int) * p_scale).to(v.dtype)
