"""Benchmark: the packed fast path gives the drop path's logits; bench.json keeps its contract."""

import json

import pytest
import torch
import yaml

import cli
from compress.artifacts import save_model
from compress.bench import profile, varlen_attention
from compress.bench.fast_path import PackedPruner, fuse_qkv
from compress.bench.random_target import random_target
from compress.bench.report import markdown_table, peer_table, write_report
from compress.bench.targets import resolve_target
from compress.bench.timing import BenchSettings, add_ratios, run_bench
from compress.errors import UserError
from compress.ltp import PrunableModel, PruningSpec
from compress.models import load_model, load_tokenizer
from compress.quantize import quantize_encoder
from compress.recipe import parse_recipe
from tests.test_ltp import PRUNING, batch_with_mixed_lengths, tiny_model

CONTRACT = {
    "variant",
    "engine",
    "device",
    "dtype",
    "compiled",
    "batch_size",
    "seq_per_s",
    "p50_ms",
    "p90_ms",
    "gflops",
    "speedup",
    "flops_reduction",
    "efficiency",
    "speedup_vs_ort_int8",
}
TOPK = PruningSpec(method="topk", max_length=16, keep_ratios=[1.0, 0.6, 0.3, 0.3])


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("spec", [PruningSpec(**PRUNING), TOPK], ids=["ltp", "topk"])
@pytest.mark.parametrize("varlen", [False, True], ids=["padded", "varlen"])
def test_packed_path_gives_the_drop_path_logits(kind, spec, varlen):
    """varlen: attention packed, through the Triton kernel (on CPU under Triton's interpreter)."""
    if varlen and not varlen_attention.available():
        pytest.skip("Triton is not installed")
    hf = tiny_model(kind)
    ids, mask = batch_with_mixed_lengths(pad_id=hf.config.pad_token_id)
    model = PrunableModel(hf, spec).eval()
    with torch.no_grad():
        dropped = model(ids, mask, mode="drop")
    packed = PackedPruner(model, varlen=varlen)(ids, mask)
    torch.testing.assert_close(packed.logits, dropped.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(packed.cls_hidden, dropped.cls_hidden, atol=1e-4, rtol=0)
    assert torch.equal(packed.tokens_in, dropped.tokens_in)
    assert torch.equal(packed.tokens_kept, dropped.tokens_kept)
    assert len(set(packed.tokens_kept[:, -2].tolist())) > 1, "kept counts should differ between examples"
    assert (packed.tokens_kept[:, -1] < packed.tokens_in[:, 0]).all(), "every example should lose tokens"


@pytest.mark.parametrize("scheme", [None, "int8_dynamic"])
def test_fused_qkv_projection_computes_the_three_projections(scheme):
    hf = tiny_model("bert")
    if scheme:
        quantize_encoder(hf, scheme)
    attn = hf.bert.encoder.layer[0].attention.self
    fused = fuse_qkv(attn)
    assert fused is not None and type(fused.weight.data) is type(attn.query.weight.data)
    x = torch.randn(7, hf.config.hidden_size)
    with torch.inference_mode():
        expected = torch.cat([attn.query(x) * attn.scaling, attn.key(x), attn.value(x)], dim=-1)
        torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("devices", [("tpu",), ("cpu", "cuda")])
def test_bench_refuses_devices_it_cannot_time(devices):
    if "cuda" in devices and torch.cuda.is_available():
        pytest.skip("CUDA is present: cuda is a valid device here")
    with pytest.raises(UserError, match="devices"):
        BenchSettings(devices=devices)


def test_compiled_packed_path_gives_the_drop_path_logits():
    model = PrunableModel(tiny_model("bert"), PruningSpec(**PRUNING)).eval()
    pruner = PackedPruner(model, compiled=True)
    for lengths in ((12, 5, 9, 3), (7, 11)):  # a second batch shape reuses the dynamic graphs
        ids, mask = batch_with_mixed_lengths(lengths)
        with torch.no_grad():
            dropped = model(ids, mask, mode="drop")
        packed = pruner(ids, mask)
        torch.testing.assert_close(packed.logits, dropped.logits, atol=1e-4, rtol=0)
        assert torch.equal(packed.tokens_kept, dropped.tokens_kept)


@pytest.fixture
def bench_models(tmp_path, tiny_model_dir):
    """The tiny BERT as baseline, pruned (pruning.json) and pruned + int8 (quantization.json)."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    # importance averages 1/N: theta_1 = 0.016 / 2 prunes about half the tokens of layer 1
    spec = PruningSpec(final_threshold=0.016, max_length=128)
    paths = {"baseline": str(tiny_model_dir)}
    for name, scheme in (("pruned", None), ("final", "int8_dynamic")):
        model = load_model(str(tiny_model_dir), 2, False)
        model.spec = spec
        if scheme:
            quantize_encoder(model.hf_model, scheme)
            model.quantization = scheme
        save_model(model, tokenizer, tmp_path / name)
        paths[name] = str(tmp_path / name)
    return paths


def tiny_recipe(model, glue):
    return parse_recipe(
        {
            "name": "tiny",
            "model": str(model),
            "task": "sst2",
            "data": {"dir": str(glue), "max_eval_samples": 12},
            "stages": [{"name": "finetune", "kind": "finetune"}],
        },
        "tiny",
    )


def test_bench_json_keeps_the_contract(bench_models, tiny_model_dir, real_glue_dir, tmp_path):
    recipe = tiny_recipe(tiny_model_dir, real_glue_dir)
    settings = BenchSettings(batch_sizes=(1, 4), threads=1, rounds=2, compile=False)
    models = bench_models
    result = run_bench(models["baseline"], models["pruned"], models["final"], recipe, settings)
    assert {"cpu", "threads", "gpu"} <= set(result["machine"]) and result["machine"]["threads"] == 1
    assert result["examples"] == 12
    rows = result["results"]
    torch_rows = [("baseline", "torch", "fp32"), ("pruned", "torch", "fp32"), ("final", "torch", "int8")]
    ort_rows = [(v, "onnxruntime", d) for v in ("baseline", "pruned") for d in ("fp32", "int8")]
    assert [(r["variant"], r["engine"], r["dtype"], r["batch_size"]) for r in rows] == [
        (*kind, size) for size in (1, 4) for kind in torch_rows + ort_rows
    ]
    for row in rows:
        assert CONTRACT <= set(row), CONTRACT - set(row)
        assert row["device"] == "cpu" and row["compiled"] is False
        assert row["seq_per_s"] > 0 and 0 < row["p50_ms"] <= row["p90_ms"]
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["flops_reduction"], rel=1e-3)
        assert row["speedup_vs_fp32_eager"] == row["speedup"]  # eager rows: the same baseline
        same = [r for r in rows if r["batch_size"] == row["batch_size"] and r["variant"] == "baseline"]
        base, peer = same[0], same[-1]  # torch fp32, ONNX Runtime int8
        assert row["speedup_vs_ort_int8"] == pytest.approx(row["seq_per_s"] / peer["seq_per_s"], rel=1e-3)
        if row["variant"] == "baseline":
            assert row["flops_reduction"] == 1.0
        else:
            assert row["flops_reduction"] > 1.1, "the pruned models should drop tokens"
        if row["engine"] == "onnxruntime":
            assert row["matmul_ms"] is None and row["export_s"] > 0 and row["compile_s"] is None
            assert row["agreement"] >= (1.0 if row["dtype"] == "fp32" else 0.75)
            continue
        assert row["export_s"] is None
        assert row["matmul_ms"] > 0, "the profiled pass should see the linear layers"
        assert row["matmul_speedup"] == pytest.approx(base["matmul_ms"] / row["matmul_ms"], rel=1e-3)
    for size in (1, 4):  # the fp32 graphs keep the tokens the torch models keep
        fp32 = [r for r in rows if r["batch_size"] == size and r["dtype"] == "fp32"]
        gflops = {(r["variant"], r["engine"]): r["gflops"] for r in fp32}
        assert gflops["baseline", "onnxruntime"] == gflops["baseline", "torch"]
        assert gflops["pruned", "onnxruntime"] == gflops["pruned", "torch"]
    paths = write_report(result, tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == result
    table, peers = paths["md"].read_text().split("Against ONNX Runtime (CPU):")
    assert table.count("\n| ") == len(rows) + 1  # header + one line per row
    # per batch size: HF eager, ORT int8, pruned eager, pruned ORT int8, and the torch int8 final
    assert peers.count("\n| ") == 1 + 2 * 5 and "| 4 | final, eager int8 |" in peers
    assert paths["png"].stat().st_size > 0


def test_machine_info_names_the_cpu_from_py_cpuinfo(monkeypatch):
    monkeypatch.setattr(profile.cpuinfo, "get_cpu_info", lambda: {"brand_raw": "Some CPU 9000"})
    machine = profile.machine_info(threads=3)
    assert machine["cpu"] == "Some CPU 9000" and machine["threads"] == 3
    assert {"gpu", "torch", "torchao", "transformers", "onnxruntime"} <= set(machine)


def test_machine_info_falls_back_to_the_platform_cpu_name(monkeypatch):
    def fail():
        raise RuntimeError("no cpuid here")

    monkeypatch.setattr(profile.cpuinfo, "get_cpu_info", fail)
    monkeypatch.setattr(profile.platform, "processor", lambda: "")
    monkeypatch.setattr(profile.platform, "machine", lambda: "")
    assert profile.machine_info(threads=1)["cpu"] == "unknown"
    monkeypatch.setattr(profile.platform, "processor", lambda: "x86_64")
    assert profile.machine_info(threads=1)["cpu"] == "x86_64"


def test_ratios_of_onnx_runtime_rows_and_devices_without_it():
    def row(variant, engine, device, dtype, compiled, seq_per_s, gflops):
        kind = {"variant": variant, "engine": engine, "device": device, "dtype": dtype, "compiled": compiled}
        return kind | {"batch_size": 8, "seq_per_s": seq_per_s, "gflops": gflops}

    rows = add_ratios(
        [
            row("baseline", "torch", "cpu", "fp32", False, 100.0, 2.0),
            row("baseline", "torch", "cpu", "fp32", True, 150.0, 2.0),
            row("baseline", "onnxruntime", "cpu", "int8", False, 300.0, 2.0),
            row("pruned", "onnxruntime", "cpu", "int8", False, 450.0, 1.0),
            row("baseline", "torch", "cuda", "fp32", False, 1000.0, 2.0),  # no ONNX Runtime on the GPU
        ]
    )
    assert [r["speedup_vs_ort_int8"] for r in rows] == [0.3333, 0.5, 1.0, 1.5, None]
    ort_pruned = rows[3]  # against the torch fp32 eager baseline, not the compiled one
    assert (ort_pruned["speedup"], ort_pruned["flops_reduction"], ort_pruned["efficiency"]) == (
        4.5,
        2.0,
        2.25,
    )
    assert rows[1]["speedup"] == 1.0 and rows[1]["speedup_vs_fp32_eager"] == 1.5
    for entry in rows:
        entry.update(p50_ms=1.0)
    lines = peer_table({"results": rows}).splitlines()
    # the bar: 0.9 x the FLOPs reduction against ORT int8 (2.0 / 1.0 GFLOPs)
    assert lines[2:] == [
        "| 8 | HF fp32 eager | 100.0 | 1.00 | 2.000 | 0.33x | 0.90x | 1.00x |",
        "| 8 | ORT int8, unpruned | 300.0 | 1.00 | 2.000 | 1.00x | 0.90x | 3.00x |",
        "| 8 | pruned, ORT int8 | 450.0 | 1.00 | 1.000 | 1.50x | 1.80x | 4.50x |",
    ]


def test_markdown_table_marks_what_a_row_does_not_measure():
    row = {"variant": "pruned", "engine": "torch", "device": "cuda", "dtype": "bf16", "compiled": True}
    row |= {"batch_size": 8, "seq_per_s": 100.0, "p50_ms": 1.0, "p90_ms": 2.0, "gflops": 0.5, "speedup": 1.8}
    row |= {"flops_reduction": 2.0, "efficiency": 0.9, "speedup_vs_fp32_eager": 3.0}  # no matmul_ms on GPU
    row |= {"speedup_vs_ort_int8": None}  # no ONNX Runtime on this GPU
    machine = {"cpu": "x", "threads": 2, "gpu": "H100"}
    table = markdown_table(
        {"task": "sst2", "split": "validation", "examples": 8, "machine": machine, "results": [row]}
    )
    assert table.splitlines()[-1].startswith("| pruned | cuda | bf16 | torch | True |")
    assert table.splitlines()[-1].endswith("| 1.80x | 2.00x | 0.90 | 3.00x | - | - | - |")


def stage_dir(folder, pruned=False, quantized=False):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if pruned:
        (folder / "pruning.json").write_text("{}")
    if quantized:
        (folder / "quantization.json").write_text("{}")
    return folder


RECIPE = {
    "name": "r",
    "model": "minilm",
    "task": "sst2",
    "stages": [
        {"name": "finetune", "kind": "finetune"},
        {"name": "soft", "kind": "ltp_soft"},
        {"name": "hard", "kind": "ltp_hard"},
        {"name": "int8", "kind": "quantize"},
    ],
}


def test_resolve_target_from_a_recipe_folder_and_from_a_stage(tmp_path):
    stages = tmp_path / "out" / "stages"
    finetune = stage_dir(stages / "finetune")
    stage_dir(stages / "soft", pruned=True)
    hard = stage_dir(stages / "hard", pruned=True)
    final = stage_dir(stages / "int8", pruned=True, quantized=True)
    (tmp_path / "out" / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    (final / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    summary = {"stages": [{"kind": s["kind"], "artifact": str(stages / s["name"])} for s in RECIPE["stages"]]}
    (tmp_path / "out" / "summary.json").write_text(json.dumps(summary))
    for target in (tmp_path / "out", final):
        resolved = resolve_target(target)
        assert (resolved.baseline, resolved.pruned, resolved.final) == (str(finetune), str(hard), str(final))
    (hard / "recipe.yaml").write_text(yaml.safe_dump({**RECIPE, "stages": RECIPE["stages"][:3]}))
    resolved = resolve_target(hard)
    assert (resolved.pruned, resolved.final) == (str(hard), None)
    (finetune / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    with pytest.raises(UserError, match="no pruned or quantised model"):
        resolve_target(finetune)
    with pytest.raises(UserError, match="not a recipe output folder"):
        resolve_target(tmp_path)


def test_bench_command_refuses_a_bad_target(tmp_path, capsys):
    assert cli.main(["bench", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bench target") and err.count("\n") == 1


def test_bench_command_refuses_an_unknown_random_architecture(tmp_path, capsys):
    assert cli.main(["bench", "random:gpt-9", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "unknown architecture" in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists(), "nothing should be written for a bad target"


@pytest.mark.slow
def test_random_target_pairs_an_unpruned_model_with_its_topk_twin(tmp_path, real_glue_dir):
    target = random_target(
        "random:minilm", tmp_path, [f"data.dir={real_glue_dir}", "data.max_eval_samples=8"]
    )
    baseline = load_model(target.baseline, 2, False)
    pruned = load_model(target.pruned, 2, False)
    assert baseline.spec is None and pruned.spec.method == "topk" and target.final is None
    assert (baseline.config.hidden_size, baseline.num_layers) == (384, 6)
    assert torch.equal(baseline.hf_model.classifier.weight, pruned.hf_model.classifier.weight)
    settings = BenchSettings(batch_sizes=(4,), threads=1, rounds=1, compile=False)
    result = run_bench(target.baseline, target.pruned, None, target.recipe, settings)
    assert result["examples"] == 8
    assert result["results"][1]["flops_reduction"] > 1.5  # top-k: ~1.7x on 6 layers
