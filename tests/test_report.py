"""What the CLI prints around a run: the stage list first, a table of the stages at the end."""

import io
import json

from rich.console import Console

import cli
from compress.pipeline import run_pipeline
from compress.recipe import load_recipe
from pipelines.report import print_summary, stage_list
from tests.test_cli import QUICKSTART
from tests.tiny_runs import table_rows, write_recipe


def stage(name: str, kind: str, accuracy: float, gflops: float, cached: bool) -> dict:
    return {
        "name": name,
        "kind": kind,
        "metrics": {"accuracy": accuracy, "train_examples_per_s": 50.0},
        "gflops": gflops,
        "bops": gflops * 1e9 * 512,
        "seconds": 12.34,
        "cached": cached,
    }


SUMMARY = {
    "recipe": "quickstart",
    "task": "sst2",
    "model": "minilm",
    "stages": [
        stage("finetune", "finetune", 0.7603, 0.541, True),
        stage("ltp_soft", "ltp_soft", 0.7500, 0.47, False),
        stage("ltp_hard", "ltp_hard", 0.7649, 0.439, False),
    ],
    "final": {
        "metric": "accuracy",
        "value": 0.7649,
        "baseline_value": 0.7603,
        "gflops": 0.439,
        "baseline_gflops": 0.541,
        "gflops_reduction": 1.2323,
        "bops_reduction_vs_fp16": 0.49,
    },
}


def test_the_stage_list_follows_until():
    recipe = load_recipe(QUICKSTART, [])
    first_three = "finetune (finetune) -> ltp_soft (ltp_soft) -> ltp_hard (ltp_hard) ->"
    assert stage_list(recipe).startswith(first_three)
    assert stage_list(recipe, "ltp_soft") == "finetune (finetune) -> ltp_soft (ltp_soft)"


def test_the_summary_table_has_a_row_per_stage_and_the_final_line():
    out = io.StringIO()
    print_summary(SUMMARY, Console(file=out, width=100))
    printed = out.getvalue()
    rows = table_rows(printed)
    assert rows[0] == ["stage", "kind", "accuracy", "GFLOPs", "BOPs", "seconds", "cached"]
    assert rows[1] == ["finetune", "finetune", "0.7603", "0.541", "2.77e+11", "cached", "yes"]
    assert rows[2] == ["ltp_soft", "ltp_soft", "0.7500", "0.47", "2.406e+11", "12.3", "no"]
    assert [row[0] for row in rows[1:]] == ["finetune", "ltp_soft", "ltp_hard"]
    assert [row[-1] for row in rows[1:]] == ["yes", "no", "no"]
    assert printed.splitlines()[-1] == (
        "final: accuracy 0.7649 (baseline 0.7603), 0.439 GFLOPs (1.23x fewer than 0.541), "
        "0.5x fewer BOPs than FP16"
    )


def test_a_rerun_from_the_cache_reports_no_work_and_keeps_the_artifacts_seconds(tmp_path, tiny_model_dir):
    """Reused stages did nothing in this run: 0 seconds in summary.json, "cached" in the table; each
    artifact's own result.json still says how long the run that made it took."""
    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir))
    first = run_pipeline(recipe, tmp_path / "out")
    assert [(s["cached"], s["seconds"] > 0) for s in first["stages"]] == [(False, True), (False, True)]
    again = run_pipeline(recipe, tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(s["cached"], s["seconds"]) for s in on_disk["stages"]] == [(True, 0.0), (True, 0.0)]
    assert again["final"] == first["final"]
    for stage in first["stages"]:
        stored = json.loads((tmp_path / "out" / "stages" / stage["name"] / "result.json").read_text())
        assert stored["seconds"] == stage["seconds"] and stored["cached"] is False
    out = io.StringIO()
    print_summary(on_disk, Console(file=out, width=120))
    rows = table_rows(out.getvalue())
    assert [(row[0], row[-2], row[-1]) for row in rows[1:]] == [
        ("finetune", "cached", "yes"),
        ("ltp_soft", "cached", "yes"),
    ]


def test_results_table_fills_the_readme_block_from_summaries(tmp_path, capsys):
    benchmark = stage("benchmark", "benchmark", 0.7649, 0.439, False)
    benchmark["metrics"].update(speedup_final_vs_ort_int8_b1=1.6, speedup_final_vs_fp32_eager_b32=5.25)
    summary = {**SUMMARY, "stages": [*SUMMARY["stages"], benchmark]}
    summary["final"] = {**SUMMARY["final"], "bops_reduction_vs_fp16": 6.65}
    out = io.StringIO()
    print_summary(summary, Console(file=out, width=300))
    speeds = "6.7x fewer BOPs than FP16; batch 1: 1.60x ONNX Runtime int8; batch 32: 5.25x HF fp32 eager"
    assert speeds in out.getvalue()
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:begin -->\nold\n<!-- results:end -->\nafter\n")
    assert cli.main(["results", str(tmp_path / "summary.json"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- results:end -->\nafter\n")
    row = next(line for line in text.splitlines() if line.startswith("| `quickstart`"))
    assert row == (
        "| `quickstart` | minilm | sst2 | accuracy 0.7603 | 0.7649 (+0.5) | 0.541 -> 0.439 (1.23x) | 6.7x "
        "| 1.60x / - | - / 5.25x |"
    )


def test_results_of_a_file_that_is_no_summary_is_one_line(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}")
    assert cli.main(["results", str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_results_into_a_missing_readme_is_one_line(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps({**SUMMARY, "final": {**SUMMARY["final"]}}))
    assert cli.main(["results", str(tmp_path / "summary.json"), "--readme", str(tmp_path / "no.md")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not list(tmp_path.glob("*.md"))
