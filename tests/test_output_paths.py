"""Nothing escapes the output folder, nothing of the user's is overwritten, and a full or read-only
disk is one line: the artifact writer, `--out` checks and `pull`, through `cli.main` in-process."""

import errno
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from cli import main
from compress.artifacts import atomic_directory, save_model
from compress.errors import UserError
from compress.ltp import PrunableModel
from compress.models import load_model, load_tokenizer
from compress.paths import check_output_dir, check_simple_name
from tests.tiny_runs import write_recipe


def run_cli(capsys, *args) -> tuple[int, list[str]]:
    """`cli.py ARGS` in this process: exit code and the error lines it printed."""
    code = main([str(arg) for arg in args])
    lines = capsys.readouterr().err.splitlines()
    return code, [line for line in lines if line.startswith("error:") or "Traceback" in line]


@contextmanager
def tmpfs(path: Path, options: str):
    """A real tmpfs mounted at `path` (needs root; the test skips without it)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("name", ["../victim", "/abs/dir", ".", "..", ".hidden", "a/b", "", "x" * 65, "a\nb"])
def test_names_that_would_leave_their_folder_are_refused(name):
    with pytest.raises(UserError, match="is not a plain name"):
        check_simple_name(name, "stages.x.name")


def test_the_writer_replaces_its_own_artifact_but_nothing_else(tmp_path):
    final = tmp_path / "stage"
    with atomic_directory(final) as scratch:
        (scratch / "result.json").write_text("{}")
    with atomic_directory(final) as scratch:  # an earlier artifact: replaced
        (scratch / "result.json").write_text('{"second": true}')
    assert (final / "result.json").read_text() == '{"second": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]  # no scratch or retired folder left

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an artifact this tool wrote"), atomic_directory(theirs):
        pass
    link = tmp_path / "link"
    link.symlink_to(theirs)
    with pytest.raises(UserError, match="not a plain folder name"), atomic_directory(link):
        pass
    assert (theirs / "notes.txt").read_text() == "keep me"


def test_a_failed_write_leaves_the_earlier_artifact_and_no_scratch(tmp_path):
    final = tmp_path / "stage"
    with atomic_directory(final) as scratch:
        (scratch / "result.json").write_text("old")
    with pytest.raises(UserError, match="No space left"), atomic_directory(final) as scratch:
        (scratch / "half").write_text("x")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert (final / "result.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_a_full_disk_while_saving_a_model_is_one_line(tmp_path, tiny_model_dir):
    """A real 256 KB tmpfs: saving the tiny model (about 4 MB) runs out of space."""
    model = load_model(str(tiny_model_dir), num_labels=2, regression=False)
    with tmpfs(tmp_path / "small", "size=256k") as disk:
        with pytest.raises(UserError, match=r"cannot write .*stage: No space left on device"):
            with atomic_directory(disk / "stage") as scratch:
                save_model(model, load_tokenizer(str(tiny_model_dir)), scratch)
        assert list(disk.iterdir()) == []


def test_out_must_be_a_writable_folder_of_ours(tmp_path):
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        check_output_dir(file)
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_output_dir(file / "below")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "recipe.txt").write_text("the user's")
    with pytest.raises(UserError, match="a folder with other files in it"):
        check_output_dir(tmp_path / "home", ours=("summary.json", "stages"))
    (tmp_path / "home" / "summary.json").write_text("{}")  # an earlier run's output: fine
    check_output_dir(tmp_path / "home", ours=("summary.json", "stages"))


def test_a_read_only_out_is_refused_before_any_work(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as disk:
        with pytest.raises(UserError, match="is not writable"):
            check_output_dir(disk / "out")


def test_compress_refuses_a_bad_out_before_training(tmp_path, tiny_model_dir, capsys):
    recipe = write_recipe(tmp_path, tiny_model_dir)
    file = tmp_path / "out.txt"
    file.write_text("x")
    code, errors = run_cli(capsys, "compress", recipe, "--out", file)
    assert (code, errors) == (2, [f"error: --out {file}: exists and is not a folder"])
    assert file.read_text() == "x"


def test_a_recipe_cannot_name_a_stage_outside_its_folder(tmp_path, tiny_model_dir, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    recipe = write_recipe(tmp_path, tiny_model_dir)
    recipe.write_text(recipe.read_text().replace("name: finetune", "name: ../../victim"))
    code, errors = run_cli(capsys, "compress", recipe, "--out", tmp_path / "out")
    assert code == 2 and len(errors) == 1 and "is not a plain name" in errors[0], errors
    assert victim.is_dir() and not (tmp_path / "out").exists()


def test_max_seq_length_beyond_the_model_is_refused_by_validate(tmp_path, tiny_model_dir, capsys):
    recipe = write_recipe(tmp_path, tiny_model_dir)
    code, errors = run_cli(capsys, "validate", recipe, "--set", "data.max_seq_length=600")
    assert code == 2 and errors == [
        f"error: data.max_seq_length: 600 is more than model '{tiny_model_dir}' takes (512 tokens)"
    ]


def test_pull_and_bench_of_a_missing_model_write_nothing(tmp_path, monkeypatch, capsys):
    """A fresh checkout (no store yet), a bad URI, --out a file: one line each, nothing created."""
    store = tmp_path / "store" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.chdir(tmp_path)
    code, errors = run_cli(capsys, "pull", "models:/nope@x")
    assert code == 2 and errors == [
        f"error: no model registry at sqlite:///{store}: nothing has been registered yet "
        "(run `python cli.py compress RECIPE` first, or set MLFLOW_TRACKING_URI)"
    ]
    code, errors = run_cli(capsys, "bench", "models:/nope@x")
    assert code == 2 and len(errors) == 1
    code, errors = run_cli(capsys, "pull", "/missing")
    assert code == 2 and errors == [
        "error: /missing: expected a registered model, models:/NAME@ALIAS or models:/NAME/N"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no artifacts/, no store
    (tmp_path / "file").write_text("x")
    code, errors = run_cli(capsys, "pull", "models:/nope@x", "--out", tmp_path / "file")
    assert code == 2 and errors == [f"error: --out {tmp_path / 'file'}: exists and is not a folder"]


def test_an_unsupported_tracking_uri_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "gopher://host/x")
    code, errors = run_cli(capsys, "pull", "models:/nope@x", "--out", "/nonexistent-ltp/x")
    assert code == 2 and len(errors) == 1 and "unsupported scheme 'gopher'" in errors[0], errors


def test_bench_names_a_device_it_does_not_know(capsys):
    code, errors = run_cli(capsys, "bench", "random:minilm", "--devices", "tpu")
    assert (code, errors) == (2, ["error: devices: unknown device 'tpu' (expected cpu and/or cuda)"])
    if not torch.cuda.is_available():
        code, errors = run_cli(capsys, "bench", "random:minilm", "--devices", "cuda")
        assert errors == ["error: devices: cuda was asked for, but this machine has no CUDA GPU (use cpu)"]


def test_training_that_diverges_stops_with_one_line(tmp_path, tiny_model_dir):
    """A finite but absurd learning rate: the loss turns non-finite and the stage says so."""
    from compress.recipe import load_recipe
    from compress.stages.base import StageInputs
    from compress.stages.common import load_inputs, train_model

    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir), ["stages.finetune.lr=1e30"])
    model, _, task_data = load_inputs(StageInputs(recipe, str(tiny_model_dir), tmp_path / "unused"))
    with pytest.raises(UserError, match=r"finetune: training (diverged|left non-finite weights)"):
        train_model(recipe.stage("finetune"), model, task_data)
    assert isinstance(model, PrunableModel)
