"""CLI: bad input gives one line naming the key or file, exit code 2, and writes nothing."""

from pathlib import Path

import pytest
import yaml

import cli

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def write_recipe(folder: Path, **changes) -> Path:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw.update(changes)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(args, capsys) -> tuple[int, str]:
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run from an empty folder so anything written to artifacts/ would show."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GLUE_DIR", raising=False)
    return tmp_path


def assert_nothing_written(workdir: Path, *allowed: str) -> None:
    assert sorted(p.name for p in workdir.iterdir()) == sorted(allowed)


@pytest.mark.parametrize(
    "changes, fragments",
    [
        ({"colour": "red"}, ["recipe.yaml", "colour: unknown key"]),
        ({"seed": "many"}, ["seed:", "integer"]),
        ({"task": "imdb"}, ["task: unknown task 'imdb'"]),
        ({"model": "./no/such/model"}, ["model './no/such/model': no such directory"]),
        ({"stages": [{"name": "x", "kind": "prune"}]}, ["stages.x.kind: unknown stage kind 'prune'"]),
        ({"stages": [{"name": "b", "kind": "benchmark"}]}, ["stages.b: a benchmark needs the stages"]),
        (
            {"stages": [{"name": "q", "kind": "quantize", "scheme": "qat_int8"}]},
            ["stages.q.scheme: qat_int8 needs a distill stage with qat: true"],
        ),
        (
            {
                "stages": [
                    {"name": "q", "kind": "quantize", "scheme": "int8_weight_only", "attention": "int8"}
                ]
            },
            ["stages.q.attention: int8 attention needs int8 activations", "not int8_weight_only"],
        ),
        ({"stages": [{"name": "h", "kind": "ltp_hard"}]}, ["stages.h: ltp_hard needs an ltp_soft"]),
        ({"stages": [{"name": "f", "kind": "finetune", "lr": -0.1}]}, ["stages.f.lr:", "greater than 0"]),
        ({"data": {"dir": "/no/such/glue"}}, ["/no/such/glue", "does not exist"]),
    ],
)
@pytest.mark.parametrize("command", ["validate", "compress"])
def test_bad_recipes(command, changes, fragments, workdir, capsys):
    recipe = write_recipe(workdir, **changes)
    code, err = run_cli([command, recipe], capsys)
    assert_one_line_error(code, err, *fragments)
    assert_nothing_written(workdir, "recipe.yaml")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--set", "stages.finetune.epochs"], ["--set 'stages.finetune.epochs'", "dotted.key=value"]),
        (["--set", "stages.finetune.epoch=1"], ["stages.finetune.epoch: unknown key"]),
        (["--set", "stages.nope.lr=1"], ["no stage named 'nope'"]),
        (["--set", "data.max_train_samples=zero"], ["data.max_train_samples:", "integer"]),
        (["--until", "nope"], ["no stage named 'nope'"]),
    ],
)
def test_bad_command_lines(args, fragments, workdir, capsys):
    code, err = run_cli(["compress", QUICKSTART, *args], capsys)
    assert_one_line_error(code, err, *fragments)
    assert_nothing_written(workdir)


def test_missing_recipe_file(workdir, capsys):
    code, err = run_cli(["compress", "missing.yaml"], capsys)
    assert_one_line_error(code, err, "recipe file not found: missing.yaml")


def test_yaml_syntax_error(workdir, capsys):
    (workdir / "broken.yaml").write_text("name: x\nstages: [\n")
    code, err = run_cli(["validate", "broken.yaml"], capsys)
    assert_one_line_error(code, err, "broken.yaml: YAML syntax error (line")


def test_data_dir_without_the_task_files(workdir, capsys):
    (workdir / "glue" / "SST-2").mkdir(parents=True)
    code, err = run_cli(["compress", QUICKSTART, "--data-dir", workdir / "glue"], capsys)
    assert_one_line_error(code, err, "task sst2 (train split): data file", "SST-2/train.tsv", "not found")
    assert_nothing_written(workdir, "glue")


def test_empty_dataset_slice(workdir, capsys, real_glue_dir):
    code, err = run_cli(
        ["compress", QUICKSTART, "--data-dir", real_glue_dir, "--set", "data.train_length=[500, 600]"], capsys
    )
    assert_one_line_error(code, err, "data.train_length", "no training example")
    assert_nothing_written(workdir)


def test_validate_accepts_the_quickstart(workdir, capsys, real_glue_dir):
    assert cli.main(["validate", str(QUICKSTART), "--data-dir", str(real_glue_dir)]) == 0
    assert "ok" in capsys.readouterr().out
