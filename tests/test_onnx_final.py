"""The final artifact run by ONNX Runtime: a quantize stage with `engine: onnxruntime` on the tiny
model, its artifact loaded back, and the ways such an artifact can be wrong."""

import json
import shutil

import pytest
import torch

from compress.data.task_data import prepare_data
from compress.errors import UserError
from compress.evaluate import model_inputs
from compress.models import load_model, load_tokenizer
from compress.onnx_model import ONNX_FILE, OnnxModel
from compress.onnx_runtime import batch_one_path
from compress.pipeline import run_pipeline
from compress.quantize import QUANTIZATION_FILE
from compress.recipe import load_recipe
from tests.tiny_runs import TRAIN, write_recipe

STAGES = [
    {"name": "finetune", "kind": "finetune", "epochs": 1, "lr": 1e-3, **TRAIN},
    {"name": "topk", "kind": "topk", "epochs": 1, "final_keep_ratio": 0.3, "start_layer": 0, **TRAIN},
    {"name": "int8", "kind": "quantize", "engine": "onnxruntime"},
]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_model_dir):
    """finetune -> topk -> quantize (onnxruntime) on the tiny model; the run's folder and summary."""
    folder = tmp_path_factory.mktemp("onnx-chain")
    recipe = load_recipe(write_recipe(folder, tiny_model_dir, stages=STAGES))
    summary = run_pipeline(recipe, folder / "out")
    return folder / "out", recipe, summary


def test_the_artifact_is_an_onnx_graph_that_loads_back(chain):
    out, recipe, summary = chain
    artifact = out / "stages" / "int8"
    assert (artifact / ONNX_FILE).is_file() and not (artifact / "model.safetensors").exists()
    saved = json.loads((artifact / QUANTIZATION_FILE).read_text())
    assert saved == {"scheme": "int8_dynamic", "int8_attention": False, "engine": "onnxruntime"}
    model = load_model(str(artifact), num_labels=2, regression=False)
    assert isinstance(model, OnnxModel) and model.spec.method == "topk"
    assert model.sessions.batch_one is not None, "model_b1.onnx, the batch-1 twin, should load beside it"
    final = summary["stages"][-1]
    assert final["bits"]["weight"] == 8 and final["bits"]["activation"] == 8
    assert final["gflops"] == pytest.approx(summary["stages"][1]["gflops"], rel=1e-6)  # same tokens kept


def test_it_agrees_with_the_torch_pruned_model(chain):
    """Same tokens kept per layer, and the same predictions on nearly every dev example (int8 moves
    the logits a little; on this random 3-layer model 1 in 32 may flip)."""
    out, recipe, _ = chain
    pruned = load_model(str(out / "stages" / "topk"), num_labels=2, regression=False)
    final = load_model(str(out / "stages" / "int8"), num_labels=2, regression=False)
    task_data = prepare_data(recipe, load_tokenizer(str(out / "stages" / "int8")), need_train=False)
    agree = total = 0
    sevens = list(next(iter(task_data.eval_loaders(7).values())))  # other batch sizes than traced
    ones = list(next(iter(task_data.eval_loaders(1).values())))[:16]  # the batch-1 twin
    for batch in sevens + ones:
        inputs = model_inputs(batch)
        with torch.no_grad():
            reference = pruned(**inputs, mode="drop")
        got = final(**inputs)
        assert torch.equal(got.tokens_kept, reference.tokens_kept)
        assert torch.allclose(got.logits, reference.logits, atol=0.25)  # int8 on large random weights
        agree += int((got.logits.argmax(-1) == reference.logits.argmax(-1)).sum())
        total += len(got.logits)
    assert agree / total >= 31 / 32 and total > 16


def test_a_bad_graph_is_one_line(chain, tmp_path):
    artifact = tmp_path / "int8"
    shutil.copytree(chain[0] / "stages" / "int8", artifact)
    twin = batch_one_path(artifact / ONNX_FILE)
    twin.write_bytes(b"not a graph")
    with pytest.raises(UserError, match=rf"{twin.name}: ONNX Runtime cannot load it"):
        load_model(str(artifact), num_labels=2, regression=False)
    twin.unlink()
    (artifact / ONNX_FILE).write_bytes(b"not a graph")
    with pytest.raises(UserError, match=rf"{ONNX_FILE}: ONNX Runtime cannot load it"):
        load_model(str(artifact), num_labels=2, regression=False)
    (artifact / ONNX_FILE).unlink()
    with pytest.raises(UserError, match=f"there is no {ONNX_FILE}"):
        load_model(str(artifact), num_labels=2, regression=False)


def test_a_graph_for_another_label_count_is_refused(chain):
    with pytest.raises(UserError, match="the graph gives 2 logits, the task needs 3"):
        load_model(str(chain[0] / "stages" / "int8"), num_labels=3, regression=False)


@pytest.mark.parametrize("change", [{"attention": "int8"}, {"scheme": "int8_weight_only"}])
def test_onnxruntime_takes_int8_linear_layers_with_float_attention(tmp_path, tiny_model_dir, change):
    stages = [*STAGES[:2], {**STAGES[2], **change}]
    with pytest.raises(UserError, match="stages.int8.engine: onnxruntime runs int8 linear layers"):
        load_recipe(write_recipe(tmp_path, tiny_model_dir, stages=stages))


def test_bench_times_the_onnx_final_beside_its_peers(chain):
    """The final artifact is timed as itself (its own graph), next to ONNX Runtime int8 of the
    unpruned model; the benchmark stage's headline ratios name it."""
    from compress.bench.targets import resolve_target
    from compress.bench.timing import BenchSettings, run_bench
    from compress.stages.benchmark import headline_ratios

    out, _, _ = chain
    target = resolve_target(out, ["data.max_eval_samples=8"])
    assert target.final == str(out / "stages" / "int8")
    settings = BenchSettings(batch_sizes=(1, 4), threads=1, rounds=1, compile=False)
    bench = run_bench(target.baseline, target.pruned, target.final, target.recipe, settings)
    finals = [row for row in bench["results"] if row["variant"] == "final"]
    assert [(row["engine"], row["dtype"], row["batch_size"]) for row in finals] == [
        ("onnxruntime", "int8", 1),
        ("onnxruntime", "int8", 4),
    ]
    assert all(row["speedup_vs_ort_int8"] > 0 and row["agreement"] >= 0.75 for row in finals)  # vs pruned
    ratios = headline_ratios(bench, compiled=False)
    assert set(ratios) >= {
        "speedup_final_vs_ort_int8_b1",
        "speedup_final_vs_fp32_eager_b4",
        "speedup_pruned_b1",
    }


def test_the_registered_pyfunc_model_serves_the_onnx_graph(chain, tmp_path, monkeypatch):
    """Registered from the artifact (as the flow does), loaded back by MLflow: predictions come
    from the ONNX Runtime session, and match the artifact's own."""
    import mlflow
    import mlflow.pyfunc

    from compress.artifacts import read_result
    from pipelines.registry import register_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out, recipe, _ = chain
    artifact = out / "stages" / "int8"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run():
        uri = register_model(recipe, artifact, read_result(artifact)["cache_key"])
    served = mlflow.pyfunc.load_model(uri)
    texts = ["good film great acting", "dull awful plot", "fine movie"]
    labels = served.predict(texts)
    model = served.unwrap_python_model()._model
    assert isinstance(model, OnnxModel) and len(labels) == 3 and set(labels) <= {"0", "1"}
    tokenizer = load_tokenizer(str(artifact))
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    direct = load_model(str(artifact), num_labels=2, regression=False)(**encoded).logits.argmax(-1)
    assert labels == [str(i) for i in direct.tolist()]
