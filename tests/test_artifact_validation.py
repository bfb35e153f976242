"""Every file read from a model folder or stage artifact is checked on load: a corrupt or hostile
one is a UserError of one line naming the file, never a traceback nor a silent acceptance."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import cli
from compress.artifacts import RESULT_FILE, read_result, save_model
from compress.errors import UserError
from compress.evaluate import evaluate_saved
from compress.ltp import PRUNING_FILE, PrunableModel, PruningSpec
from compress.models import load_model
from compress.pipeline import cached_result, plan
from compress.quantize import QUANTIZATION_FILE, WEIGHTS_FILE, quantize_encoder
from compress.recipe import load_recipe
from tests.tiny_runs import write_recipe

# The tiny model of tests/conftest.py has 3 layers and hidden size 32.
GOOD_SPEC = {
    "method": "ltp",
    "final_threshold": 0.05,
    "max_length": 32,
    "threshold_offsets": [0.0, 0.01, 0.02],
}


def load(folder: Path, num_labels: int = 2) -> PrunableModel:
    return load_model(str(folder), num_labels=num_labels, regression=False)


def refused(folder: Path, file: str, fragment: str, num_labels: int = 2) -> str:
    """load_model's one-line UserError, which names `file` and contains `fragment`."""
    with pytest.raises(UserError) as caught:
        load(folder, num_labels)
    message = str(caught.value)
    assert "\n" not in message and file in message and fragment in message, message
    return message


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture
def model_dir(tmp_path, tiny_model_dir) -> Path:
    """A copy of the tiny float model with a valid pruning.json, for a test to spoil."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / PRUNING_FILE).write_text(json.dumps(GOOD_SPEC))
    return folder


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model quantised (int8_dynamic) and saved as an artifact."""
    folder = tmp_path_factory.mktemp("int8")
    model = load(tiny_model_dir)
    quantize_encoder(model.hf_model, "int8_dynamic")
    model.quantization = "int8_dynamic"
    save_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), folder)
    return folder


@pytest.fixture
def int8_copy(tmp_path, int8_dir) -> Path:
    folder = tmp_path / "int8"
    shutil.copytree(int8_dir, folder)
    return folder


# ---------------------------------------------------------------------------------------------
# pruning.json


def test_a_valid_pruning_spec_loads(model_dir):
    assert load(model_dir).spec == PruningSpec(**GOOD_SPEC)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"threshold_offsets": [NaN, 0.0]}', "threshold_offsets.0: Input should be a finite number"),
        ('{"final_threshold": Infinity}', "final_threshold: Input should be a finite number"),
        ('{"final_threshold": -0.01}', "final_threshold: Input should be greater than or equal to 0"),
        ('{"temperature": 0}', "temperature: Input should be greater than 0"),
        ('{"max_length": "128"}', "max_length: Input should be a valid integer"),
        ('{"method": "random"}', "method: Input should be 'ltp' or 'topk'"),
        ('{"method": "topk", "keep_ratios": [1.0, 0.0]}', "keep_ratios.1: Input should be greater than 0"),
        ('{"method": "topk", "keep_ratios": [1, 1.5]}', "keep_ratios.1: Input should be less than or equal"),
        ('{"thresholds": [0.1, 0.2]}', "thresholds: unknown key"),
        ("[0.1, 0.2]", "Input should be an object"),
        ("theta = 0.1", "Invalid JSON"),
        (
            '{"threshold_offsets": [0, 0.01, 0.02, 0.03]}',
            "threshold_offsets has 4 entries, the model has 3 layers",
        ),
        ('{"method": "topk", "keep_ratios": [1.0]}', "keep_ratios has 1 entries, the model has 3 layers"),
        ('{"method": "topk"}', "keep_ratios has 0 entries, the model has 3 layers"),
    ],
)
def test_a_bad_pruning_spec_is_refused(model_dir, text, fragment):
    (model_dir / PRUNING_FILE).write_text(text)
    assert refused(model_dir, PRUNING_FILE, fragment).startswith(str(model_dir / PRUNING_FILE))


def test_a_spec_that_does_not_fit_the_model_is_refused_where_they_meet(tiny_model_dir):
    """ltp_hard's `thresholds:` folder: the spec is loaded alone, then meets the model."""
    hf_model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    with pytest.raises(UserError, match="threshold_offsets has 4 entries, the model has 3 layers"):
        PrunableModel(hf_model, PruningSpec(threshold_offsets=[0.0, 0.01, 0.02, 0.03]))


def test_bad_thresholds_fail_evaluation_in_one_line(tmp_path, model_dir):
    (model_dir / PRUNING_FILE).write_text('{"threshold_offsets": [NaN, NaN]}')
    recipe = load_recipe(write_recipe(tmp_path, model_dir))
    with pytest.raises(UserError, match="pruning.json: threshold_offsets.0: Input should be a finite"):
        evaluate_saved(recipe, str(model_dir))


# ---------------------------------------------------------------------------------------------
# model folder: weights and config


def test_a_pickle_is_refused_unopened(model_dir, tmp_path):
    """pytorch_model.bin without safetensors: refused, and never unpickled (it could run code)."""
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    (model_dir / WEIGHTS_FILE).unlink()
    torch.save(Payload(), model_dir / "pytorch_model.bin")
    refused(model_dir, WEIGHTS_FILE, "only safetensors weights are loaded")
    assert not marker.exists()


def test_a_truncated_safetensors_file_is_refused(model_dir):
    weights = model_dir / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    refused(model_dir, WEIGHTS_FILE, "is corrupt")


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"num_hidden_layers": "two"}, "expected int, got str"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be at least 1"),
        ({"num_attention_heads": 5}, "not a multiple of the number of attention heads"),
        ({"model_type": "nonsense"}, "nonsense"),
    ],
)
def test_a_bad_config_is_refused(model_dir, change, fragment):
    edit_json(model_dir / "config.json", **change)
    refused(model_dir, "config.json", fragment)


def test_a_config_that_is_not_json_is_refused(model_dir):
    (model_dir / "config.json").write_text("{hidden_size: 32")
    refused(model_dir, "config.json", "not a valid JSON file")


def test_weights_that_do_not_fit_the_config_are_refused(model_dir):
    edit_json(model_dir / "config.json", hidden_size=64, intermediate_size=128)
    wanted = "bert.embeddings.LayerNorm.bias has shape [32], config.json and the task need [64]"
    refused(model_dir, WEIGHTS_FILE, wanted)


def test_a_layer_missing_from_the_weights_is_refused_not_initialised(model_dir):
    edit_json(model_dir / "config.json", num_hidden_layers=4)
    (model_dir / PRUNING_FILE).unlink()
    refused(model_dir, WEIGHTS_FILE, "tensors missing (bert.encoder.layer.3.")


def test_a_head_for_another_label_count_is_refused(model_dir):
    refused(model_dir, WEIGHTS_FILE, "classifier.bias has shape [2], config.json and the task need [3]", 3)


# ---------------------------------------------------------------------------------------------
# quantised artifacts: quantization.json and the torchao-flattened weights


def test_a_quantised_artifact_loads(int8_dir):
    model = load(int8_dir)
    assert model.quantization == "int8_dynamic" and not model.int8_attention
    assert type(model.hf_model.bert.encoder.layer[0].output.dense.weight).__name__ == "Int8Tensor"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"scheme": "int3"}', "scheme: Input should be 'int8_dynamic'"),
        ('{"scheme": "int8_dynamic", "bits": 8}', "bits: unknown key"),
        ('{"scheme": "qat_int8", "int8_attention": "yes"}', "int8_attention: Input should be a valid bool"),
        ("{}", "scheme: required key is missing"),
        ("int8_dynamic", "Invalid JSON"),
    ],
)
def test_a_bad_quantization_file_is_refused(int8_copy, text, fragment):
    (int8_copy / QUANTIZATION_FILE).write_text(text)
    assert refused(int8_copy, QUANTIZATION_FILE, fragment).startswith(str(int8_copy / QUANTIZATION_FILE))


def test_weights_of_another_scheme_are_refused(int8_copy):
    edit_json(int8_copy / QUANTIZATION_FILE, scheme="int8_weight_only")
    refused(int8_copy, WEIGHTS_FILE, "does not fit scheme 'int8_weight_only'")


def test_float_weights_under_a_quantization_file_are_refused(model_dir, int8_dir):
    shutil.copy(int8_dir / QUANTIZATION_FILE, model_dir)
    refused(model_dir, WEIGHTS_FILE, "no torchao metadata")


def rewrite_weights(folder: Path, change) -> None:
    """Rewrite model.safetensors after `change(tensors)`, keeping its torchao metadata."""
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    change(tensors)
    save_file(tensors, folder / WEIGHTS_FILE, metadata=metadata)


def test_a_missing_quantised_tensor_is_refused(int8_copy):
    rewrite_weights(int8_copy, lambda tensors: tensors.pop("bert.encoder.layer.1.output.dense._weight_scale"))
    refused(int8_copy, WEIGHTS_FILE, "1 tensors missing (bert.encoder.layer.1.output.dense._weight_scale")


def test_an_unexpected_quantised_tensor_is_refused(int8_copy):
    rewrite_weights(int8_copy, lambda tensors: tensors.update(extra=torch.zeros(1)))
    refused(int8_copy, WEIGHTS_FILE, "1 unexpected tensors (extra")


def test_a_quantised_head_for_another_label_count_is_refused(int8_copy):
    wanted = "classifier.weight is torch.float32 [2, 32], not torch.float32 [3, 32]"
    refused(int8_copy, WEIGHTS_FILE, wanted, 3)


def test_a_truncated_quantised_weights_file_is_refused(int8_copy):
    weights = int8_copy / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    refused(int8_copy, WEIGHTS_FILE, "not a readable safetensors file")


# ---------------------------------------------------------------------------------------------
# result.json and the pipeline cache


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"name": "finetune"', "Invalid JSON"),
        ("[]", "Input should be an object"),
        ('{"name": "finetune"}', "required key is missing"),
    ],
)
def test_a_corrupt_result_is_refused(tmp_path, text, fragment):
    (tmp_path / RESULT_FILE).write_text(text)
    with pytest.raises(UserError, match=fragment) as caught:
        read_result(tmp_path)
    assert str(caught.value).startswith(str(tmp_path / RESULT_FILE))


@pytest.fixture
def finetune_step(tmp_path, tiny_model_dir):
    """The planned finetune stage of a tiny recipe, its artifact folder holding a valid result.json."""
    step = plan(load_recipe(write_recipe(tmp_path, tiny_model_dir)), tmp_path / "out")[0]
    result = {
        "name": "finetune",
        "kind": "finetune",
        "artifact": str(step.inputs.output_dir),
        "metrics": {"accuracy": 0.5},
        "main_metric": "accuracy",
        "gflops": 0.01,
        "bops": 1e7,
        "bits": {"weight": 32, "activation": 32},
        "tokens_per_layer": [20.0, 20.0],
        "seconds": 1.0,
        "cached": False,
        "history": [],
        "cache_key": step.cache_key,
    }
    step.inputs.output_dir.mkdir(parents=True)
    (step.inputs.output_dir / RESULT_FILE).write_text(json.dumps(result))
    return step


def test_a_valid_cached_result_is_reused(finetune_step):
    result = cached_result(finetune_step)
    assert result is not None and result.cached and result.metrics == {"accuracy": 0.5}


@pytest.mark.parametrize("text", ['{"name": "finetune", "kind"', '{"metrics": "high"}', "null"])
def test_a_corrupt_cached_result_counts_as_missing(finetune_step, caplog, text):
    (finetune_step.inputs.output_dir / RESULT_FILE).write_text(text)
    with caplog.at_level(logging.WARNING, logger="compress.pipeline"):
        assert cached_result(finetune_step) is None
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and RESULT_FILE in warnings[0] and "\n" not in warnings[0], warnings


# ---------------------------------------------------------------------------------------------
# through the CLI


def test_bench_of_an_artifact_with_nan_thresholds_is_one_line(tmp_path, model_dir, capsys):
    """`cli.py bench` on a stage artifact whose pruning.json holds NaN: exit 2, one line."""
    (model_dir / PRUNING_FILE).write_text('{"threshold_offsets": [NaN, 0.0]}')
    shutil.copy(write_recipe(tmp_path, model_dir), model_dir / "recipe.yaml")
    code = cli.main(["bench", str(model_dir), "--out", str(tmp_path / "bench")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert f"{model_dir / PRUNING_FILE}: threshold_offsets.0: Input should be a finite number" in errors[0]


@pytest.mark.parametrize(
    "content",
    ["{", "[1, 2]", json.dumps({"model": {"type": "WordPiece", "vocab": 3}})],
    ids=["not-json", "list", "shape"],
)
def test_a_malformed_tokenizer_is_one_line(model_dir, content):
    from compress.models import load_tokenizer

    (model_dir / "tokenizer.json").write_text(content)
    with pytest.raises(UserError, match=r"cannot load its tokenizer \(tokenizer.json") as caught:
        load_tokenizer(str(model_dir))
    assert "\n" not in str(caught.value)


def test_ltp_hard_names_the_thresholds_file_of_another_depth(tmp_path, tiny_model_dir):
    """thresholds from a 4-layer model for the 3-layer one: the stage names the file."""
    from compress.stages.base import StageInputs
    from compress.stages.ltp_hard import LTPHardConfig, run

    thresholds = tmp_path / "thresholds"
    thresholds.mkdir()
    PruningSpec(threshold_offsets=[0.0, 0.0, 0.0, 0.0]).save(thresholds)
    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir))
    config = LTPHardConfig(name="hard", kind="ltp_hard", epochs=1, thresholds=str(thresholds))
    inputs = StageInputs(recipe, str(tiny_model_dir), tmp_path / "out")
    with pytest.raises(UserError, match=rf"{thresholds / PRUNING_FILE}: threshold_offsets has 4 entries"):
        run(config, inputs)
    assert not (tmp_path / "out").exists()
