"""Attention over packed variable-length sequences that also returns LTP's token importance.

The GPU half of the pruned inference path (`compress.bench.fast_path`). The kept tokens of a batch lie
packed in one (T, H, dh) tensor, sequence b at rows cu_seqlens[b] : cu_seqlens[b + 1]. One Triton
kernel gives, per token, the attention output and the importance score of `compress.ltp`:

    s[j] = 1 / (H * N) * sum_h sum_i A[h, i, j]     (i, j in j's sequence; N the fixed max length)

without writing the probability matrix A out. A program owns BLOCK_M queries of one sequence
and head. Pass 1 walks the sequence's keys in BLOCK_N blocks for the softmax max and normaliser
(online, as FlashAttention); pass 2 walks them again, forms the normalised probabilities in
registers, accumulates A @ V, and adds each block's column sums (fp32) into s with atomic adds.
QK^T runs twice; the score costs no memory traffic beyond T floats. BLOCK_N is the longest
sequence rounded up to a power of two, at most 128: up to 128 tokens each pass is one key tile.

No host sync: the grid is sized from an upper bound of the longest sequence (the caller's padded
length); programs past their sequence's end return at once. Triton compiles the kernel once per
dtype, head size and BLOCK_N bucket (16, 32, 64, 128), whatever the lengths. On a machine
without CUDA the kernel runs on CPU tensors under Triton's interpreter if TRITON_INTERPRET=1 is
set before Triton is imported: that is how the tests check it (tests/conftest.py).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU path does not need it; `available()` says whether this one can run
    triton = None

BLOCK_M = 16
MAX_BLOCK_N = 128


def available() -> bool:
    """Whether Triton is installed (the kernel runs on CUDA, or on CPU under TRITON_INTERPRET=1)."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _load_rows(base, start, rows, row_ok, stride_token, dims, dim_ok):
        """Rows `start + rows` of one head's (T, dh) slice; zeros outside the sequence and head dim."""
        mask = row_ok[:, None] & dim_ok[None, :]
        return tl.load(base + (start + rows)[:, None] * stride_token + dims[None, :], mask=mask, other=0.0)

    @triton.jit
    def _attention_importance(
        Q, K, V, Out, Importance, cu_seqlens,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
        importance_scale,
        HEAD_DIM: tl.constexpr, HEAD_DIM_PADDED: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        block, seq, head = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        start = tl.load(cu_seqlens + seq)
        length = tl.load(cu_seqlens + seq + 1) - start
        if block * BLOCK_M >= length:
            return
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < length
        dims = tl.arange(0, HEAD_DIM_PADDED)
        dim_ok = dims < HEAD_DIM
        q = _load_rows(Q + head * stride_qh, start, rows, row_ok, stride_qt, dims, dim_ok)

        # pass 1: row max m and normaliser l of the softmax
        m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_M], tl.float32)  # noqa: E741 (FlashAttention's name)
        for key_start in range(0, length, BLOCK_N):
            cols = key_start + tl.arange(0, BLOCK_N)
            col_ok = cols < length
            k = _load_rows(K + head * stride_kh, start, cols, col_ok, stride_kt, dims, dim_ok)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            l = l * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)  # noqa: E741
            m = m_new

        # pass 2: normalised probabilities -> output and column sums
        acc = tl.zeros([BLOCK_M, HEAD_DIM_PADDED], tl.float32)
        for key_start in range(0, length, BLOCK_N):
            cols = key_start + tl.arange(0, BLOCK_N)
            col_ok = cols < length
            k = _load_rows(K + head * stride_kh, start, cols, col_ok, stride_kt, dims, dim_ok)
            v = _load_rows(V + head * stride_vh, start, cols, col_ok, stride_vt, dims, dim_ok)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            p = tl.exp(s - m[:, None]) / l[:, None]
            p = tl.where(row_ok[:, None] & col_ok[None, :], p, 0.0)
            acc += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            tl.atomic_add(Importance + start + cols, tl.sum(p, 0) * importance_scale, mask=col_ok)
        out = Out + head * stride_oh + (start + rows)[:, None] * stride_ot + dims[None, :]
        tl.store(out, acc.to(Out.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


@torch.compiler.disable  # a Triton launch with data-dependent bounds: runs between compiled graphs
def attention_with_importance(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
    max_length: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """softmax(q k^T) v per sequence, and each token's importance (fp32).

    q, k, v: (T, H, dh) packed, q already scaled (last dimension contiguous); cu_seqlens: (B + 1,)
    int32 offsets; max_seqlen: an upper bound of the longest sequence (sizes the grid only);
    max_length: the N of the importance score. Returns the output (T, H, dh) and scores (T,).
    """
    if triton is None:
        raise RuntimeError("the varlen attention kernel needs Triton (pip install triton)")
    tokens, heads, head_dim = q.shape
    out = torch.empty_like(q)
    importance = torch.zeros(tokens, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(max_seqlen, BLOCK_M), cu_seqlens.numel() - 1, heads)
    key_block = min(MAX_BLOCK_N, max(16, triton.next_power_of_2(max_seqlen)))
    precision = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 stays fp32 (thresholds ~0.01)
    _attention_importance[grid](
        q, k, v, out, importance, cu_seqlens,
        *q.stride()[:2], *k.stride()[:2], *v.stride()[:2], *out.stride()[:2],
        1.0 / (heads * max_length),
        HEAD_DIM=head_dim, HEAD_DIM_PADDED=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_M=BLOCK_M, BLOCK_N=key_block, PRECISION=precision,
    )  # fmt: skip
    return out, importance
