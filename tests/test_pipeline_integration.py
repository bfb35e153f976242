"""End to end on the bundled MiniLM and a slice of the real SST-2 files (marked slow)."""

import json

import pytest
import torch

import cli
from compress.ltp import PruningSpec
from compress.models import load_model
from tests.test_cli import QUICKSTART

pytestmark = pytest.mark.slow
SLICE = ["--set", "data.max_train_samples=800", "--set", "data.max_eval_samples=300"]
FAST = [
    *("--set", "stages.finetune.lr=1e-4", "--set", "stages.finetune.epochs=3"),
    *("--set", "stages.finetune.batch_size=16"),
    *("--set", "stages.ltp_soft.epochs=0.5", "--set", "stages.ltp_hard.epochs=0.5"),
    *("--set", "stages.distill.epochs=0.5", "--set", "stages.benchmark.rounds=1"),
]
CHAIN = ["finetune", "ltp_soft", "ltp_hard", "distill", "quantize", "benchmark"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, prefect_harness):
    """One quickstart run on a small slice, shared by the tests below."""
    from tests.conftest import real_glue_path

    glue = real_glue_path()
    if not (glue / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"real GLUE data is missing (looked in {glue}; set GLUE_DIR)")
    out = tmp_path_factory.mktemp("quickstart")
    args = ["compress", str(QUICKSTART), "--data-dir", str(glue), "--out", str(out), *SLICE, *FAST]
    assert cli.main(args) == 0
    return out, args


def test_finetuned_minilm_beats_chance_on_sst2_dev(quick_run):
    out, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    finetune = summary["stages"][0]
    assert finetune["kind"] == "finetune"
    assert finetune["metrics"]["accuracy"] > 0.65, (
        "800 examples should take MiniLM well past chance (0.80 measured)"
    )
    assert finetune["metrics"]["train_examples_per_s"] > 0


def test_summary_has_the_contract_shape(quick_run):
    out, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    assert {"recipe", "task", "model", "stages", "final"} <= summary.keys()
    assert [s["kind"] for s in summary["stages"]] == CHAIN
    for stage in summary["stages"]:
        assert {
            "name",
            "kind",
            "metrics",
            "gflops",
            "bops",
            "bits",
            "tokens_per_layer",
            "seconds",
            "cached",
        } <= stage.keys()
        assert len(stage["tokens_per_layer"]) == 6
    final = summary["final"]
    assert final["baseline_gflops"] == summary["stages"][0]["gflops"]
    assert final["gflops_reduction"] == pytest.approx(final["baseline_gflops"] / final["gflops"], rel=1e-3)
    hard = summary["stages"][2]
    assert hard["tokens_per_layer"][-1] < hard["tokens_per_layer"][0], "the pruned model drops tokens"
    assert summary["stages"][-1]["bits"]["weight"] == 8 and final["bops_reduction_vs_fp16"] > 4
    assert (out / "recipe.yaml").is_file()


def test_pruned_artifact_reloads_with_its_thresholds(quick_run, real_glue_dir):
    out, _ = quick_run
    artifact = out / "stages" / "ltp_hard"
    spec = PruningSpec.load(artifact)
    assert spec is not None and spec.method == "ltp" and len(spec.threshold_offsets) == 6
    model = load_model(str(artifact), num_labels=2, regression=False)
    assert torch.equal(model.threshold_offsets, torch.tensor(spec.threshold_offsets))
    assert (artifact / "model.safetensors").is_file() and (artifact / "recipe.yaml").is_file()
    assert not list(artifact.parent.glob(".*partial*")), "no scratch directory left behind"


def test_rerun_is_served_from_cache_and_a_changed_stage_reruns(quick_run):
    out, args = quick_run
    rerun = [*args, "--set", "stages.quantize.eval_batch_size=64", "--until", "quantize"]
    assert cli.main(rerun) == 0  # up to the changed stage: the benchmark after it would rerun too
    summary = json.loads((out / "summary.json").read_text())
    assert [s["cached"] for s in summary["stages"]] == [True, True, True, True, False]
