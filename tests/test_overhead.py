"""pipelines.overhead on the tiny model: direct, through the flow, and cached wall times."""

import json

from pipelines import overhead
from tests.tiny_runs import write_recipe


def test_overhead_writes_the_three_wall_times(prefect_harness, tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the benchmark's own store, under --out
    recipe = write_recipe(tmp_path, tiny_model_dir, name="tiny_overhead")
    out = tmp_path / "overhead"
    assert overhead.main([str(recipe), "--out", str(out)]) == 0
    result = json.loads((out / "overhead.json").read_text())
    assert set(result) == {
        "recipe",
        "stages",
        "direct_s",
        "flow_s",
        "cached_s",
        "overhead_pct",
        "check_s",
        "prefect_api",
        "tracking_uri",
    }
    assert result["recipe"] == "tiny_overhead" and result["stages"] == ["finetune", "ltp_soft"]
    assert all(result[key] > 0 for key in ("direct_s", "flow_s", "cached_s", "check_s"))
    assert result["overhead_pct"] == round(
        (result["flow_s"] - result["direct_s"]) / result["direct_s"] * 100, 2
    )
    assert result["tracking_uri"] == f"sqlite:///{out.resolve() / 'mlflow.db'}"
    for run, cached in (("direct", [False, False]), ("flow", [True, True])):  # flow/: the cached re-run's
        summary = json.loads((out / run / "summary.json").read_text())
        assert [stage["cached"] for stage in summary["stages"]] == cached
    assert "tiny_overhead: direct" in capsys.readouterr().out
