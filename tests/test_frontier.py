"""`cli.py frontier`: several methods' accuracy against GFLOPs in one plot, logged to MLflow."""

import json

from mlflow.tracking import MlflowClient

import cli


def sweep_file(path, metric="f1", scores=((0.80, 0.5), (0.85, 0.8))):
    baseline = {"baseline_score": 0.86, "baseline_gflops": 1.2}
    rows = [
        {"value": str(i), "metric": metric, "score": score, "gflops": gflops, **baseline}
        for i, (score, gflops) in enumerate(scores)
    ]
    path.write_text(json.dumps({"recipe": "r", "key": "k", "rows": rows}))
    return path


def summary_file(path, score, gflops, metric="f1"):
    final = {
        "metric": metric,
        "value": score,
        "gflops": gflops,
        "baseline_value": 0.86,
        "baseline_gflops": 1.2,
    }
    path.write_text(json.dumps({"recipe": "r", "task": "mrpc", "final": final}))
    return path


def test_curves_from_sweeps_and_summaries_make_one_plot_in_mlflow(tmp_path, capsys):
    sweep = sweep_file(tmp_path / "sweep_k.json", scores=((0.85, 0.8), (0.80, 0.5)))
    runs = [
        summary_file(tmp_path / f"s{i}.json", score, gflops)
        for i, (score, gflops) in enumerate([(0.83, 0.4), (0.79, 0.3)])
    ]
    out = tmp_path / "plots" / "mrpc.png"
    code = cli.main(["frontier", f"budgeted LTP={sweep}", f"top-k={runs[1]},{runs[0]}", "--out", str(out)])
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out.with_suffix(".json").read_text())
    assert [curve["label"] for curve in data["curves"]] == ["budgeted LTP", "top-k"]
    assert [p["gflops"] for p in data["curves"][0]["points"]] == [0.5, 0.8]  # sorted by GFLOPs
    assert [p["score"] for p in data["curves"][1]["points"]] == [0.79, 0.83]
    assert "top-k: f1 0.7900 at 0.300, 0.8300 at 0.400 GFLOPs" in capsys.readouterr().out
    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("frontier").experiment_id])[0]
    assert {item.path for item in client.list_artifacts(run.info.run_id)} == {"mrpc.png", "mrpc.json"}
    assert run.data.params["curves"] == "budgeted LTP (2 points); top-k (2 points)"


def test_bad_curves_are_one_line_each(tmp_path, capsys):
    f1 = sweep_file(tmp_path / "sweep_a.json")
    accuracy = summary_file(tmp_path / "summary.json", 0.9, 0.3, metric="accuracy")
    (tmp_path / "other.json").write_text('{"name": 1}')
    cases = {
        "no label": ([str(f1)], "write LABEL=PATH"),
        "missing": ([f"a={tmp_path / 'nope.json'}"], "cannot read it"),
        "not ours": ([f"a={tmp_path / 'other.json'}"], "not a sweep_<key>.json or a summary.json"),
        "metrics differ": ([f"a={f1}", f"b={accuracy}"], "different metrics (accuracy, f1)"),
        "within a curve": ([f"a={f1},{accuracy}"], "its metric is accuracy"),
    }
    for name, (args, message) in cases.items():
        assert cli.main(["frontier", *args, "--out", str(tmp_path / "x.png")]) == 2, name
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (name, err)
    assert cli.main(["frontier", f"a={f1}", "--out", str(tmp_path / "x.pdf")]) == 2
    assert "is a PNG file" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
