"""Recipe schema, overrides and cross-stage rules."""

import re
from pathlib import Path

import pytest
import yaml

from compress.errors import UserError
from compress.overrides import apply_overrides, parse_override
from compress.recipe import dump_recipe, load_recipe, parse_recipe
from compress.stages.ltp_soft import LTPSoftConfig

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
BASE = {
    "name": "t",
    "model": "minilm",
    "task": "sst2",
    "stages": [
        {"name": "finetune", "kind": "finetune"},
        {"name": "soft", "kind": "ltp_soft"},
        {"name": "hard", "kind": "ltp_hard"},
    ],
}


def with_changes(**changes) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw.update(changes)
    return raw


CHAIN = ["finetune", "ltp_soft", "ltp_hard", "distill", "quantize", "benchmark"]


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates_and_is_self_contained(path):
    recipe = load_recipe(path)
    assert recipe.stages and recipe.name == path.stem
    assert recipe.stages[0].kind == "finetune", "each recipe trains its own teacher"
    assert "artifacts/" not in path.read_text(), "a recipe must not depend on an earlier run's output"
    assert load_recipe(path, ["model=minilm"]).model == "minilm"


@pytest.mark.parametrize("name", ["sst2", "mrpc", "rte", "qnli", "stsb", "cola", "qqp", "mnli"])
def test_the_task_recipes_run_the_whole_chain_with_the_paper_settings(name):
    recipe = load_recipe(Path(RECIPES[0]).parent / f"{name}_int8.yaml")
    soft, hard = recipe.stage("ltp_soft"), recipe.stage("ltp_hard")
    assert [stage.kind for stage in recipe.stages] == CHAIN
    assert recipe.model == "roberta-base" and recipe.data.max_seq_length == 128
    assert soft.batch_size == hard.batch_size == 64
    assert (soft.final_threshold, soft.temperature, hard.epochs) == (0.01, 1e-3, 5)
    assert soft.epochs == (10 if name in ("mrpc", "rte", "stsb", "cola") else 1)
    assert recipe.stage("distill").qat and recipe.stage("quantize").scheme == "qat_int8"
    minilm = load_recipe(Path(RECIPES[0]).parent / f"{name}_int8.yaml", ["model=minilm"])
    assert minilm.stage("finetune").lr > recipe.stage("finetune").lr, "MiniLM needs a larger lr to learn"


def test_quickstart_runs_every_stage_kind():
    assert [stage.kind for stage in load_recipe(Path(RECIPES[0]).parent / "quickstart.yaml").stages] == CHAIN


def test_model_settings_apply_for_their_model_and_the_users_overrides_win():
    raw = with_changes(
        model="roberta-base",
        model_settings={"minilm": {"stages.finetune.lr": 1e-4, "data.max_seq_length": 64}},
    )
    assert parse_recipe(apply_overrides(raw, []), "t").stage("finetune").lr == 2e-5
    minilm = parse_recipe(apply_overrides(raw, ["model=minilm"]), "t")
    assert (minilm.stage("finetune").lr, minilm.data.max_seq_length) == (1e-4, 64)
    mine = parse_recipe(apply_overrides(raw, ["model=minilm", "stages.finetune.lr=3e-5"]), "t")
    assert mine.stage("finetune").lr == 3e-5
    assert "model_settings" not in dump_recipe(minilm), "the resolved recipe holds the applied values"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["lr"], "model_settings: expected a mapping of model"),
        ({"minilm": {"stages.nope.lr": 1e-4}}, "model_settings.minilm.stages.nope.lr: no stage named 'nope'"),
        ({"minilm": {"stages..lr": 1e-4}}, "expected a dotted key"),
    ],
)
def test_bad_model_settings_are_one_line(settings, message):
    raw = with_changes(model_settings=settings)
    with pytest.raises(UserError, match=re.escape(message)):
        apply_overrides(raw, [])


def test_defaults_and_alias():
    recipe = parse_recipe(BASE, "t")
    soft = recipe.stage("soft")
    assert isinstance(soft, LTPSoftConfig)
    assert (soft.l1_weight, soft.final_threshold, soft.temperature) == (0.1, 0.01, 1e-3)
    assert recipe.data.max_seq_length == 128


def test_overrides_are_typed_by_the_schema():
    raw = apply_overrides(
        BASE,
        [
            "stages.finetune.epochs=1",
            "stages.soft.lambda=0.05",
            "data.max_train_samples=100",
            "seed=7",
            "stages.hard.lr=1e-5",
        ],
    )
    recipe = parse_recipe(raw, "t")
    assert recipe.stage("finetune").epochs == 1.0
    assert recipe.stage("soft").lambda_ == 0.05
    assert recipe.stage("hard").lr == 1e-5
    assert (recipe.data.max_train_samples, recipe.seed) == (100, 7)
    assert BASE["stages"][0] == {"name": "finetune", "kind": "finetune"}, "overrides copy, never mutate"


def test_parse_override_reads_yaml_scalars():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=text") == (["a"], "text")


def test_resolved_recipe_round_trips():
    recipe = parse_recipe(apply_overrides(BASE, ["stages.soft.lambda=0.02"]), "t")
    again = parse_recipe(yaml.safe_load(dump_recipe(recipe)), "again")
    assert again == recipe


def test_until_selects_a_prefix():
    recipe = parse_recipe(BASE, "t")
    assert [s.name for s in recipe.until("soft")] == ["finetune", "soft"]
    with pytest.raises(UserError, match="no stage named 'nope'"):
        recipe.until("nope")


@pytest.mark.parametrize(
    "raw, message",
    [
        (with_changes(colour="red"), r"colour: unknown key"),
        (with_changes(data={"max_seq_len": 12}), r"data\.max_seq_len: unknown key"),
        (with_changes(seed="abc"), r"seed: Input should be a valid integer"),
        (with_changes(task="imdb"), r"task: unknown task 'imdb'"),
        (with_changes(stages=[]), r"stages: List should have at least 1 item"),
        (
            with_changes(stages=[{"name": "a", "kind": "finetune", "lr": -1}]),
            r"stages\.a\.lr: .*greater than 0",
        ),
        (
            with_changes(stages=[{"name": "a", "kind": "finetune", "epochs": "x"}]),
            r"stages\.a\.epochs: .*number",
        ),
        (with_changes(stages=[{"name": "a", "kind": "finetune", "lr_": 1}]), r"stages\.a\.lr_: unknown key"),
        (
            with_changes(stages=[{"name": "a", "kind": "prune"}]),
            r"stages\.a\.kind: unknown stage kind 'prune'",
        ),
        (
            with_changes(stages=[{"name": "a", "kind": "benchmark"}]),
            r"stages\.a: a benchmark needs the stages that make its models before it",
        ),
        (
            with_changes(
                stages=[
                    {"name": "f", "kind": "finetune"},
                    {"name": "b", "kind": "benchmark"},
                    {"name": "q", "kind": "quantize"},
                ]
            ),
            r"stages\.q: a benchmark stage must be the last stage",
        ),
        (
            with_changes(stages=[{"name": "d", "kind": "distill"}]),
            r"stages\.d: distill needs a finetune stage before it or 'teacher'",
        ),
        (
            with_changes(stages=[{"name": "q", "kind": "quantize"}, {"name": "f", "kind": "finetune"}]),
            r"stages\.f: nothing but a benchmark can follow a quantize stage",
        ),
        (
            with_changes(stages=[{"name": "q", "kind": "quantize", "scheme": "int3"}]),
            r"stages\.q\.scheme: Input should be 'int8_dynamic'",
        ),
        (
            with_changes(stages=[{"name": "d", "kind": "distill", "teacher": "x", "alpha": 2}]),
            r"stages\.d\.alpha: .*less than or equal to 1",
        ),
        (with_changes(stages=[{"name": "h", "kind": "ltp_hard"}]), r"stages\.h: ltp_hard needs an ltp_soft"),
        (
            with_changes(stages=[{"name": "a", "kind": "finetune"}, {"name": "a", "kind": "finetune"}]),
            r"duplicate stage name 'a'",
        ),
        (
            with_changes(
                stages=[
                    {"name": "s1", "kind": "ltp_soft"},
                    {"name": "h", "kind": "ltp_hard"},
                    {"name": "s", "kind": "ltp_soft"},
                ]
            ),
            r"stages\.s: ltp_soft cannot follow an ltp_hard stage",
        ),
        (with_changes(task="custom"), r"data\.eval_file: task 'custom' needs"),
        (["not", "a", "mapping"], r"must be a YAML mapping"),
    ],
)
def test_bad_recipes_give_one_line_naming_the_key(raw, message):
    with pytest.raises(UserError, match=message) as error:
        parse_recipe(raw, "recipe.yaml")
    assert "\n" not in str(error.value)
    assert str(error.value).startswith("recipe.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        ("stages.finetune.epochs", r"expected dotted\.key=value"),
        ("=3", r"expected dotted\.key=value"),
        ("a..b=3", r"expected dotted\.key=value"),
        ("stages.nope.epochs=1", r"no stage named 'nope'"),
        ("stages.finetune=1", r"stages\.<stage name>\.<key>"),
        ("model.name=x", r"'model' is a value, not a section"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(BASE, [override])


def test_override_of_a_key_that_does_not_exist_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(UserError, match=r"stages\.finetune\.epoch: unknown key"):
        load_recipe(path, ["stages.finetune.epoch=1"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nstages: [\n  - a: b\n")
    with pytest.raises(UserError, match=r"broken\.yaml: YAML syntax error \(line \d+"):
        load_recipe(path)
