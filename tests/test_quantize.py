"""Distillation loss, torchao quantisation of a pruned model, quantised artifacts and BOPs."""

import json
import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from compress.artifacts import save_model
from compress.bench.fast_path import PackedPruner
from compress.errors import UserError
from compress.flops import FP16, FP32, Precision, encoder_cost
from compress.int8_attention import attention_context, attention_scores
from compress.ltp import PrunableModel, PruningSpec
from compress.models import load_model
from compress.quantize import PRECISION, check_scheme, precision, quantize_encoder
from compress.stages.teacher import kd_loss
from tests.test_ltp import PRUNING, TINY, batch_with_mixed_lengths


def pruned_tiny_model() -> PrunableModel:
    torch.manual_seed(0)
    config = BertConfig(**{**TINY, "hidden_size": 64, "intermediate_size": 128}, attn_implementation="sdpa")
    return PrunableModel(BertForSequenceClassification(config).eval(), PruningSpec(**PRUNING)).eval()


def test_kd_loss_matches_a_hand_computation():
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    t = 2.0

    def softmax(row):
        exp = [math.exp(x / t) for x in row]
        return [e / sum(exp) for e in exp]

    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p, q = softmax(t_row), softmax(s_row)
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    expected = expected / 2 * t**2
    assert float(kd_loss(student, teacher, t, regression=False)) == pytest.approx(expected, rel=1e-6)
    assert float(kd_loss(teacher, teacher, t, regression=False)) == pytest.approx(0.0, abs=1e-7)
    assert float(kd_loss(torch.tensor([[1.0]]), torch.tensor([[3.0]]), t, regression=True)) == 4.0


def test_bops_of_a_tiny_model_match_a_hand_count():
    d, f = 4, 8
    n_in = torch.tensor([[3, 2]])  # one example, two layers
    n_keep = torch.tensor([[2, 1]])
    cost = encoder_cost(d, f, n_in, n_keep)
    # layer 0: QKV 3*16*3 + out 16*2 + FFN 2*4*8*2 = 144+32+128 = 304; attention 2*4*9 = 72
    # layer 1: QKV 3*16*2 + out 16*1 + FFN 2*4*8*1 = 96+16+64 = 176;  attention 2*4*4 = 32
    assert (cost.linear_macs, cost.attention_macs) == (480, 104)
    assert cost.bops(FP32) == (480 + 104) * 32 * 32
    assert cost.bops(FP16) == (480 + 104) * 16 * 16
    assert cost.bops(Precision(8, 8, 32)) == 480 * 64 + 104 * 1024
    assert cost.gflops == 2 * 584 / 1e9


def test_quantised_model_still_drops_tokens_and_stays_close():
    model = pruned_tiny_model()
    ids, mask = batch_with_mixed_lengths()
    with torch.no_grad():
        reference = model(ids, mask, mode="drop")
        quantize_encoder(model.hf_model, "int8_dynamic")
        dropped = model(ids, mask, mode="drop")
        masked = model(ids, mask, mode="mask")
    layer = model.hf_model.bert.encoder.layer[0]
    assert type(layer.attention.self.query.weight).__name__ == "Int8Tensor"
    assert type(model.hf_model.classifier.weight) is torch.nn.Parameter  # the head stays in float
    assert (dropped.tokens_kept < dropped.tokens_in).any()
    assert torch.equal(dropped.tokens_kept, masked.tokens_kept)
    # int8 rounds each row's activations: the float sums of the masked and the packed layouts differ
    # in their last bits, which can move a rounding step (measured: 0.011 on logits of about 1)
    torch.testing.assert_close(dropped.logits, masked.logits, atol=3e-2, rtol=0)
    error = (dropped.logits - reference.logits).norm() / reference.logits.norm()
    assert error < 0.1  # int8 rounding, not a different model


def test_int8_attention_matmuls_are_exact_on_integer_operands_and_close_on_float_ones():
    torch.manual_seed(0)
    q, k = torch.randint(-127, 128, (2, 3, 5, 16)).float(), torch.randint(-127, 128, (2, 3, 6, 16)).float()
    q[..., 0], k[..., 0] = 127, -127  # every token reaches 127: the scales are exactly 1
    assert torch.equal(attention_scores(q, k, int8=True), q @ k.transpose(-1, -2))
    probs = torch.randn(2, 3, 5, 6).softmax(-1)
    v = torch.randn(2, 3, 6, 16)
    for got, want in [
        (attention_scores(v, v, int8=True), v @ v.transpose(-1, -2)),
        (attention_context(probs, v, int8=True), probs @ v),
    ]:
        error = (got - want).norm() / want.norm()
        assert 0 < error < 0.02  # rounded, but int8 rounding only


def test_int8_attention_still_drops_tokens_and_the_packed_path_agrees():
    model = pruned_tiny_model()
    ids, mask = batch_with_mixed_lengths()
    quantize_encoder(model.hf_model, "int8_dynamic")
    with torch.no_grad():
        float_attention = model(ids, mask, mode="drop")
        model.int8_attention = True
        dropped, masked = model(ids, mask, mode="drop"), model(ids, mask, mode="mask")
        packed = PackedPruner(model)(ids, mask)
    assert not torch.equal(dropped.logits, float_attention.logits)  # the int8 path really ran
    error = (dropped.logits - float_attention.logits).norm() / float_attention.logits.norm()
    assert error < 0.1
    assert (dropped.tokens_kept < dropped.tokens_in).any()
    torch.testing.assert_close(dropped.logits, masked.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(packed.logits, dropped.logits, atol=1e-4, rtol=0)
    assert torch.equal(packed.tokens_kept, dropped.tokens_kept)
    assert precision("int8_dynamic", int8_attention=True) == Precision(8, 8, 8)


@pytest.mark.parametrize(
    ("scheme", "int8_attention"),
    [("int8_dynamic", False), ("int8_weight_only", False), ("qat_int8", False), ("int8_dynamic", True)],
)
def test_quantised_artifact_round_trip_gives_the_same_logits(
    tmp_path, tiny_model_dir, scheme, int8_attention
):
    from transformers import AutoTokenizer

    model = pruned_tiny_model()
    quantize_encoder(model.hf_model, scheme)
    model.quantization, model.int8_attention = scheme, int8_attention
    save_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path)
    loaded = load_model(str(tmp_path), num_labels=TINY["num_labels"], regression=False)
    ids, mask = batch_with_mixed_lengths()
    with torch.no_grad():
        expected, got = model(ids, mask), loaded(ids, mask)
    assert loaded.quantization == scheme and loaded.spec == model.spec
    assert loaded.int8_attention == int8_attention
    assert torch.equal(expected.logits, got.logits)
    assert torch.equal(expected.tokens_kept, got.tokens_kept)


def test_int4_is_refused_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: int4 weight-only is allowed")
    with pytest.raises(UserError, match="'int4_weight_only' needs a CUDA GPU"):
        check_scheme("int4_weight_only")


def test_every_scheme_has_its_operand_bits():
    assert PRECISION["int8_dynamic"] == Precision(8, 8, 32)
    assert PRECISION["int8_weight_only"].activation_bits == 32


def test_pipeline_distils_and_quantises_a_pruned_model(tmp_path, tiny_model_dir, real_glue_dir):
    from compress.pipeline import run_pipeline
    from compress.recipe import parse_recipe

    train = {"epochs": 1, "batch_size": 16, "lr": 1e-3}
    recipe = parse_recipe(
        {
            "name": "tiny_int8",
            "model": str(tiny_model_dir),
            "task": "sst2",
            "data": {"dir": str(real_glue_dir), "max_train_samples": 48, "max_eval_samples": 16},
            "stages": [
                {"name": "finetune", "kind": "finetune", **train},
                {"name": "soft", "kind": "ltp_soft", "final_threshold": 0.05, **train},
                {"name": "hard", "kind": "ltp_hard", **train},
                {"name": "kd", "kind": "distill", "qat": True, "hidden_weight": 0.1, **train},
                {"name": "int8", "kind": "quantize", "scheme": "qat_int8", "attention": "int8"},
                {"name": "bench", "kind": "benchmark", "batch_sizes": [8], "rounds": 1, "compile": False},
            ],
        },
        "tiny_int8",
    )
    summary = run_pipeline(recipe, tmp_path)
    stages = {stage["name"]: stage for stage in summary["stages"]}
    assert stages["kd"]["bits"]["weight"] == 32 and stages["int8"]["bits"] == {
        "weight": 8,
        "activation": 8,
        "attention": 8,
    }
    final = summary["final"]
    assert final["bops"] == stages["int8"]["bops"] < stages["kd"]["bops"]
    assert final["value"] == stages["int8"]["metrics"]["accuracy"]  # the benchmark trains nothing
    bench = json.loads((tmp_path / "stages" / "bench" / "bench.json").read_text())
    timed = {(row["variant"], row["batch_size"]) for row in bench["results"]}
    assert timed == {("baseline", 8), ("pruned", 8), ("final", 8)}
    assert bench["models"]["final"] == stages["int8"]["artifact"]
    assert bench["models"]["pruned"] == stages["kd"]["artifact"]
    assert "speedup_final_vs_fp32_eager_b8" in stages["bench"]["metrics"]
    assert final["bops_reduction_vs_fp32"] == pytest.approx(4 * final["bops_reduction_vs_fp16"], rel=1e-3)
    loaded = load_model(stages["int8"]["artifact"], num_labels=2, regression=False)
    assert loaded.quantization == "qat_int8" and loaded.spec is not None and loaded.int8_attention
    weight = loaded.hf_model.bert.encoder.layer[0].output.dense.weight
    assert type(weight).__name__ == "Int8Tensor"  # the real int8 kernel, not a dequantising QAT tensor


def test_int8_attention_on_an_unpruned_model_is_one_clear_error(tmp_path, tiny_model_dir, real_glue_dir):
    from compress.pipeline import run_pipeline
    from compress.recipe import parse_recipe

    recipe = parse_recipe(
        {
            "name": "tiny_unpruned_int8",
            "model": str(tiny_model_dir),
            "task": "sst2",
            "data": {"dir": str(real_glue_dir), "max_train_samples": 16, "max_eval_samples": 16},
            "stages": [{"name": "int8", "kind": "quantize", "attention": "int8"}],
        },
        "tiny_unpruned_int8",
    )
    with pytest.raises(UserError, match="stages.int8.attention: int8 attention runs in the pruning forward"):
        run_pipeline(recipe, tmp_path)
    assert not (tmp_path / "stages" / "int8" / "result.json").exists()
