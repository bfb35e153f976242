"""ONNX Runtime: exported graphs give the torch drop path's logits and token counts; int8; refusals."""

from collections import Counter

import onnx
import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

from compress.errors import UserError
from compress.ltp import PrunableModel, PruningSpec
from compress.onnx_runtime import (
    GraphSessions,
    batch_one_path,
    cuda_available,
    export_onnx,
    input_names,
    make_session,
    quantize_int8,
    run_session,
    session_feed,
)
from compress.quantize import quantize_encoder
from tests.test_ltp import PRUNING, TINY, batch_with_mixed_lengths, tiny_model

TOPK = PruningSpec(method="topk", max_length=16, keep_ratios=[1.0, 0.6, 0.3, 0.3])
CASES = {  # name: (architecture, spec)
    "unpruned": ("bert", None),
    "ltp": ("bert", PruningSpec(**PRUNING)),
    "topk": ("bert", TOPK),
    "roberta-ltp": ("roberta", PruningSpec(**PRUNING)),  # no token types, as roberta-base
}
# batch 1, lengths down to 2, and more rows and longer rows than the export example (4 rows, <= 12)
SHAPES = [(7,), (2,), (20, 3, 15, 8, 2, 11), (30, 30, 30, 4, 4, 4, 4, 4)]
FP32_ATOL = 1e-4  # measured: <= 1.1e-6 on these models
INT8_AGREEMENT = 0.9  # measured: 78-79 of 79 examples per model


def _hf_model(kind: str) -> torch.nn.Module:
    if kind == "bert":
        return tiny_model("bert")
    torch.manual_seed(0)
    config = RobertaConfig(**TINY, pad_token_id=1, type_vocab_size=1, attn_implementation="eager")
    return RobertaForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """case -> (torch model, fp32 ONNX path), each case exported once per module, when first asked for."""
    folder, cache = tmp_path_factory.mktemp("onnx"), {}

    def get(case: str):
        if case not in cache:
            kind, spec = CASES[case]
            model = PrunableModel(_hf_model(kind), spec).eval()
            ids, mask = batch_with_mixed_lengths(pad_id=model.config.pad_token_id)
            example = {"input_ids": ids, "attention_mask": mask}
            cache[case] = model, export_onnx(model, folder / f"{case}.onnx", example)
        return cache[case]

    return get


def _batches(pad_id: int):
    torch.manual_seed(3)
    for lengths in SHAPES:
        ids, mask = batch_with_mixed_lengths(lengths, pad_id)
        yield torch.randint(5, 100, ids.shape) * mask + pad_id * (1 - mask), mask  # (B, n) each
    ids, mask = batch_with_mixed_lengths((9, 14), pad_id)
    yield ids[:1], mask[:1]  # one padded request: the general graph's


@pytest.mark.parametrize("case", CASES)
def test_exported_graph_gives_the_drop_path_logits_and_counts(exported, case):
    """An unpadded request runs on the pruned graph's batch-1 twin (no attention mask, no
    re-padding), a padded one on the general graph."""
    model, path = exported(case)
    sessions = GraphSessions(path, threads=1)
    assert [i.name for i in sessions.general.get_inputs()] == input_names(model.config)
    assert (sessions.batch_one is not None) == (model.spec is not None)
    if sessions.batch_one is not None:
        twin_inputs = onnx.load(batch_one_path(path)).graph.input
        assert [i.name for i in twin_inputs] == input_names(model.config, batch_one=True)
        assert "attention_mask" not in [i.name for i in twin_inputs]
        assert twin_inputs[0].type.tensor_type.shape.dim[0].dim_value == 1
    pruned = []
    for ids, mask in _batches(model.config.pad_token_id):
        with torch.no_grad():
            expected = model(ids, mask, mode="drop")
        logits, tokens_in, tokens_kept = sessions(sessions.feed({"input_ids": ids, "attention_mask": mask}))
        torch.testing.assert_close(logits, expected.logits, atol=FP32_ATOL, rtol=0)
        assert torch.equal(tokens_in, expected.tokens_in) and torch.equal(tokens_kept, expected.tokens_kept)
        assert tokens_kept.dtype == torch.int64 and tokens_kept.shape == (len(ids), model.num_layers)
        pruned.append(bool((tokens_kept[:, -2] < tokens_in[:, 0]).any()))
        if sessions.batch_one is not None and len(ids) == 1 and mask.all():  # the twin itself
            feed = sessions.feed({"input_ids": ids, "attention_mask": mask})
            del feed["attention_mask"]
            twin_logits, _, twin_kept = run_session(sessions.batch_one, feed)
            torch.testing.assert_close(twin_logits, expected.logits, atol=FP32_ATOL, rtol=0)
            assert torch.equal(twin_kept, expected.tokens_kept)
    assert any(pruned) == (model.spec is not None), "pruned graphs should drop tokens, only they"


def test_roberta_graph_has_no_token_types(exported):
    model, path = exported("roberta-ltp")
    assert input_names(model.config) == ["input_ids", "attention_mask"]
    assert [i.name for i in onnx.load(path).graph.input] == ["input_ids", "attention_mask"]


@pytest.mark.parametrize("case", ["unpruned", "ltp"])
def test_int8_graph_quantises_linear_layers_only_and_agrees_with_fp32(exported, case, tmp_path):
    model, path = exported(case)
    int8 = quantize_int8(path, tmp_path / "int8.onnx")
    graph = onnx.load(int8).graph
    ops = Counter(node.op_type for node in graph.node)
    layers = model.num_layers
    assert ops["MatMulInteger"] == 6 * layers + 2  # Q, K, V, out, FFN in and out per layer; pooler, head
    assert ops["MatMul"] == 2 * layers, "QK^T and AV (the importance scores) should stay fp32"
    scales = {init.name: list(init.dims) for init in graph.initializer}
    weight_scales = [scales[node.input[3]] for node in graph.node if node.op_type == "MatMulInteger"]
    assert all(dims and dims[0] > 1 for dims in weight_scales), "weights should be quantised per channel"
    fp32, quantized = make_session(path, threads=1), make_session(int8, threads=1)
    agree = total = 0
    for ids, mask in _batches(model.config.pad_token_id):
        batch = {"input_ids": ids, "attention_mask": mask}
        expected = run_session(fp32, session_feed(fp32, batch))[0].argmax(dim=-1)
        agree += int(
            (run_session(quantized, session_feed(quantized, batch))[0].argmax(dim=-1) == expected).sum()
        )
        total += len(ids)
    assert agree / total >= INT8_AGREEMENT


@pytest.mark.parametrize("what", ["torchao", "int8_attention", "bf16"])
def test_export_refuses_a_model_that_is_not_the_float_model(what, tmp_path):
    model = PrunableModel(tiny_model("bert"), PruningSpec(**PRUNING)).eval()
    if what == "torchao":
        quantize_encoder(model.hf_model, "int8_dynamic")
        model.quantization = "int8_dynamic"
    elif what == "int8_attention":
        model.int8_attention = True
    else:
        model.hf_model.to(torch.bfloat16)
    ids, mask = batch_with_mixed_lengths()
    with pytest.raises(UserError, match="ONNX export: cannot export") as error:
        export_onnx(model, tmp_path / "m.onnx", {"input_ids": ids, "attention_mask": mask})
    assert "\n" not in str(error.value) and not (tmp_path / "m.onnx").exists()


def test_cuda_session_without_the_cuda_provider_is_refused(exported):
    if cuda_available():
        pytest.skip("ONNX Runtime has CUDA here")
    with pytest.raises(UserError, match="CUDA execution provider"):
        make_session(exported("unpruned")[1], threads=1, device="cuda")


@pytest.mark.gpu
def test_cuda_session_gives_the_cpu_logits(exported):
    if not cuda_available():
        pytest.skip("ONNX Runtime has no CUDA execution provider here")
    model, path = exported("ltp")
    cpu, cuda = make_session(path, threads=1), make_session(path, threads=1, device="cuda")
    for ids, mask in _batches(model.config.pad_token_id):
        batch = {"input_ids": ids, "attention_mask": mask}
        expected, got = (
            run_session(cpu, session_feed(cpu, batch)),
            run_session(cuda, session_feed(cuda, batch)),
        )
        torch.testing.assert_close(got[0], expected[0], atol=1e-3, rtol=0)
        assert torch.equal(got[2], expected[2])
