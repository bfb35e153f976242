"""The packed attention + importance kernel: against a per-sequence hand computation, and inside the
pruned fast path against the drop path. On CPU the Triton kernel runs under Triton's interpreter."""

import pytest
import torch

from compress.bench import varlen_attention
from compress.bench.fast_path import PackedPruner
from compress.ltp import PrunableModel, PruningSpec
from tests.test_ltp import PRUNING, batch_with_mixed_lengths, tiny_model

pytestmark = pytest.mark.skipif(not varlen_attention.available(), reason="Triton is not installed")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def reference(q, k, v, offsets, max_length):
    """Dense softmax attention one sequence at a time; importance = column sums / (H * N)."""
    out, importance = torch.empty_like(q), torch.empty(q.shape[0])
    heads = q.shape[1]
    for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        qs, ks, vs = (x[start:end].transpose(0, 1).double() for x in (q, k, v))  # (H, n, dh)
        probs = (qs @ ks.transpose(1, 2)).softmax(dim=-1)  # (H, n, n)
        out[start:end] = (probs @ vs).transpose(0, 1).to(q.dtype)
        importance[start:end] = (probs.sum(dim=(0, 1)) / (heads * max_length)).float()
    return out, importance


@pytest.mark.parametrize("head_dim", [8, 32])
def test_kernel_matches_dense_attention_per_sequence(head_dim):
    torch.manual_seed(0)
    lengths = [5, 150, 1, 33]  # 150 spans two 128-key blocks; 1 attends to itself only
    q, k, v = (torch.randn(sum(lengths), 3, head_dim) for _ in range(3))
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    out, importance = varlen_attention.attention_with_importance(q, k, v, offsets, max(lengths), 128)
    expected_out, expected_importance = reference(q, k, v, offsets, 128)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(importance, expected_importance, atol=1e-7, rtol=1e-5)
    # each query's probabilities sum to 1: a sequence's scores add up to n / N
    bounds = zip(offsets[:-1], offsets[1:], strict=True)
    per_sequence = torch.stack([importance[start:end].sum() for start, end in bounds])
    torch.testing.assert_close(per_sequence, torch.tensor(lengths) / 128.0)


def test_grid_from_an_upper_bound_of_the_length_gives_the_same_result():
    torch.manual_seed(1)
    q, k, v = (torch.randn(20, 2, 16) for _ in range(3))
    offsets = torch.tensor([0, 12, 20], dtype=torch.int32)
    exact = varlen_attention.attention_with_importance(q, k, v, offsets, 12, 64)
    bound = varlen_attention.attention_with_importance(q, k, v, offsets, 64, 64)
    for a, b in zip(exact, bound, strict=True):  # other key block sizes: equal up to rounding
        torch.testing.assert_close(a, b)


def test_varlen_refuses_int8_attention():
    model = PrunableModel(tiny_model("bert"), PruningSpec(**PRUNING))
    model.int8_attention = True
    with pytest.raises(ValueError, match="float only"):
        PackedPruner(model, varlen=True)


@CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_fast_path_is_varlen_and_matches_the_drop_path(dtype):
    model = PrunableModel(tiny_model("bert"), PruningSpec(**PRUNING)).eval().to("cuda", dtype)
    ids, mask = (t.cuda() for t in batch_with_mixed_lengths())
    with torch.no_grad():
        dropped = model(ids, mask, mode="drop")
    pruner = PackedPruner(model, compiled=True)
    assert pruner.varlen
    packed = pruner(ids, mask)
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(packed.logits.float(), dropped.logits.float(), atol=tolerance, rtol=0)
    if dtype == torch.float32:
        assert torch.equal(packed.tokens_kept, dropped.tokens_kept)


@CUDA
@pytest.mark.gpu
def test_bench_reports_the_attention_kernel_share_on_cuda(tiny_model_dir, real_glue_dir, tmp_path):
    from compress.artifacts import save_model
    from compress.bench.timing import BenchSettings, run_bench
    from compress.models import load_model, load_tokenizer
    from tests.bench.test_bench import tiny_recipe

    model = load_model(str(tiny_model_dir), 2, False)
    model.spec = PruningSpec(final_threshold=0.016, max_length=128)
    save_model(model, load_tokenizer(str(tiny_model_dir)), tmp_path / "pruned")
    settings = BenchSettings(batch_sizes=(4,), threads=1, rounds=1, compile=False, devices=("cuda",))
    result = run_bench(
        str(tiny_model_dir),
        str(tmp_path / "pruned"),
        None,
        tiny_recipe(tiny_model_dir, real_glue_dir),
        settings,
    )
    shares = [row["attention_kernel_share"] for row in result["results"] if row["variant"] == "pruned"]
    assert shares and all(0 < share < 1 for share in shares)
