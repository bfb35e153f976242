"""Hostile recipes and overrides: bounded YAML, finite numbers, plain names, one-line errors.

The last test is a seeded fuzz of `cli validate`: a few hundred malformed recipes and `--set`
strings, each of which must end in exit 0 or in exit 2 with one short `error:` line.
"""

import copy
import logging
import random
import time
from pathlib import Path

import pytest
import yaml

import cli
from compress.errors import UserError
from compress.recipe import load_recipe
from compress.user_input import MAX_YAML_CHARS
from tests.data.test_data import write_glue_files

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
BASE = """\
name: hostile
model: minilm
task: sst2
seed: 42
data: {max_train_samples: 8, max_seq_length: 32}
stages:
  - {name: finetune, kind: finetune, epochs: 1, lr: 5.0e-5}
  - {name: soft, kind: ltp_soft, epochs: 1}
"""
MAX_MESSAGE = 400  # characters: the path of a tmp file plus a message; user values are cut to ~80


def write(folder: Path, content: str | bytes, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def with_stage(**keys) -> str:
    """BASE with one more key (or more) in the finetune stage."""
    extra = "".join(f", {key}: {value}" for key, value in keys.items())
    return BASE.replace("kind: finetune, epochs: 1, lr: 5.0e-5", f"kind: finetune{extra}")


def laughs(depth: int, fanout: int = 9) -> str:
    """The "billion laughs": a_k holds `fanout` aliases of a_(k-1), so a_depth expands to fanout**depth."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * fanout)}]"]
    lines += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * fanout)}]" for k in range(1, depth + 1)]
    return "\n".join(lines) + "\n"


def refused(path: Path, *overrides: str) -> str:
    """The one-line UserError that loading `path` must raise."""
    with pytest.raises(UserError) as error:
        load_recipe(path, overrides)
    message = str(error.value)
    assert "\n" not in message and len(message) < MAX_MESSAGE, message
    return message


@pytest.fixture
def glue_dir(tmp_path, monkeypatch) -> Path:
    """A few rows of every GLUE task in tmp_path/glue, named by GLUE_DIR: what preflight reads."""
    root = write_glue_files(tmp_path / "glue")
    monkeypatch.setenv("GLUE_DIR", str(root))
    return root


# --- aliases, duplicates, encodings, depth, size -----------------------------------------------


@pytest.mark.parametrize("where", ["kind", "name"])
def test_billion_laughs_is_refused_fast_with_a_short_message(tmp_path, where):
    stage = "{name: f, kind: *a9}" if where == "kind" else "{name: *a9, kind: finetune}"
    path = write(tmp_path, laughs(9) + f"name: x\nmodel: minilm\ntask: sst2\nstages:\n  - {stage}\n")
    start = time.perf_counter()
    message = refused(path)
    assert time.perf_counter() - start < 5
    assert "more than 10000 values (aliases count as expanded)" in message and "(line " in message


def test_a_few_aliases_and_merge_keys_still_load(tmp_path):
    stages = """stages:
  - &ft {name: ft, kind: finetune, epochs: &epochs 2, lr: 3.0e-5}
  - {<<: *ft, name: ft2, lr: 1.0e-5}
  - {name: soft, kind: ltp_soft, epochs: *epochs}
"""
    recipe = load_recipe(write(tmp_path, BASE.split("stages:")[0] + stages))
    merged = recipe.stage("ft2")
    assert (merged.kind, merged.epochs, merged.lr) == ("finetune", 2, 1e-5), "explicit keys win over merged"
    assert recipe.stage("soft").epochs == 2


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    path = write(tmp_path, BASE.replace("task: sst2", "task: &loop [*loop]"))
    assert "alias *loop is inside its own anchor" in refused(path)


@pytest.mark.parametrize(
    "text, line",
    [
        (BASE + "name: again\n", 9),
        (BASE.replace("epochs: 1, lr", "epochs: 1, epochs: 2, lr"), 7),
        (BASE.replace("max_seq_length: 32", "max_seq_length: 32, max_seq_length: 64"), 5),
    ],
    ids=["top-level", "stage", "data"],
)
def test_duplicate_keys_are_refused_with_the_line(tmp_path, text, line):
    message = refused(write(tmp_path, text))
    assert f"(line {line}, " in message and "duplicate key" in message


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("name: café\n".encode("latin-1"), "not UTF-8 text (byte 9)"),
        (BASE.encode("utf-16"), "not UTF-8 text (byte 0)"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "a binary file (NUL byte at offset 7)"),
        (b"name: x\x07\n", "character #x0007 at offset 7 is not allowed"),
    ],
    ids=["latin-1", "utf-16", "binary", "control-character"],
)
def test_unreadable_files_are_refused(tmp_path, content, fragment):
    message = refused(write(tmp_path, content))
    assert fragment in message and "recipe.yaml" in message


@pytest.mark.parametrize(
    "nested",
    [
        "data: " + "[" * 10_000 + "]" * 10_000 + "\n",
        "data:\n" + "".join("  " * (k + 1) + f"k{k}:\n" for k in range(60)),
    ],
    ids=["flow", "block"],
)
def test_deep_nesting_is_refused(tmp_path, nested):
    assert "nested deeper than 50 levels" in refused(write(tmp_path, BASE.replace("data:", "old:") + nested))


def test_too_many_values_are_refused_while_composing(tmp_path):
    start = time.perf_counter()
    message = refused(write(tmp_path, BASE + "labels: [" + "1, " * 300_000 + "]\n"))
    assert time.perf_counter() - start < 5
    assert "(line 9, column " in message and "more than 10000 values" in message


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path):
    message = refused(write(tmp_path, BASE + "#" * MAX_YAML_CHARS))
    assert f"larger than {MAX_YAML_CHARS} bytes" in message


@pytest.mark.parametrize(
    "value, fragment",
    [("1" * 5000, "Exceeds the limit (4300 digits)"), ("2024-13-45", "month must be in 1..12")],
    ids=["5000-digit-int", "bad-date"],
)
def test_values_python_cannot_build_are_refused_with_the_line(tmp_path, value, fragment):
    message = refused(write(tmp_path, BASE.replace("seed: 42", f"seed: {value}")))
    assert "(line 4, column 7): unreadable value" in message and fragment in message


# --- numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("lr", ".inf", "stages.finetune.lr: Input should be a finite number"),
        ("lr", ".nan", "stages.finetune.lr: Input should be a finite number"),
        ("epochs", ".inf", "stages.finetune.epochs: Input should be a finite number"),
        ("epochs", "1001", "stages.finetune.epochs: Input should be less than or equal to 1000"),
        ("weight_decay", ".nan", "stages.finetune.weight_decay: Input should be a finite number"),
        ("max_grad_norm", "-.inf", "stages.finetune.max_grad_norm: Input should be a finite number"),
    ],
)
def test_numbers_must_be_finite_and_sane(tmp_path, key, value, fragment):
    assert fragment in refused(write(tmp_path, with_stage(**{key: value})))
    assert fragment in refused(write(tmp_path, BASE), f"stages.finetune.{key}={value}"), "--set too"


@pytest.mark.parametrize("seed", ["-1", "1e23", "4294967296", "1.5", ".inf"])
def test_a_seed_outside_0_to_2_32_is_refused(tmp_path, seed):
    assert "seed: " in refused(write(tmp_path, BASE), f"seed={seed}")


def test_seeds_at_the_edges_of_the_range_load(tmp_path):
    path = write(tmp_path, BASE)
    assert [load_recipe(path, [f"seed={s}"]).seed for s in (0, 2**32 - 1)] == [0, 2**32 - 1]


# --- names that become folders -------------------------------------------------------------------

PATH_LIKE = ["../../victim", "/abs/dir", ".", "..", ".hidden", "-rf", "a/b", "a b", "", "x" * 65, "é"]


@pytest.mark.parametrize("name", PATH_LIKE)
def test_a_stage_name_must_be_a_plain_name(tmp_path, name):
    message = refused(write(tmp_path, BASE.replace("name: finetune,", f"name: {name!r},")))
    assert "stages.[0].name: " in message and "is not a plain name" in message


@pytest.mark.parametrize("name", PATH_LIKE)
def test_the_recipe_name_must_be_a_plain_name(tmp_path, name):
    message = refused(write(tmp_path, BASE.replace("name: hostile", f"name: {name!r}")))
    assert message.split("recipe.yaml: ", 1)[1].startswith("name: ") and "is not a plain name" in message


def test_plain_names_with_dots_and_dashes_load(tmp_path):
    text = BASE.replace("name: hostile", "name: sst2_int8.v2-b").replace("name: soft,", "name: s0ft.2-x_,")
    recipe = load_recipe(write(tmp_path, text))
    assert (recipe.name, recipe.stages[1].name) == ("sst2_int8.v2-b", "s0ft.2-x_")


# --- messages quote user values short ------------------------------------------------------------


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            BASE.replace("kind: ltp_soft", f"kind: {'k' * 10_000}"),
            "stages.soft.kind: unknown stage kind 'kkk",
        ),
        (BASE.replace("task: sst2", f"task: {'t' * 10_000}"), "task: unknown task 'ttt"),
        (BASE + f"{'u' * 1000}: 1\n", "'uuu"),  # YAML caps an implicit key at 1024
        (BASE + '"two\\nlines": 1\n', "'two\\nlines': unknown key"),
        (BASE.replace("stages:", "stages: 7\nold:"), "stages: expected a list of stages, got int"),
    ],
    ids=["kind", "task", "key", "newline-key", "stages-not-a-list"],
)
def test_messages_cut_user_values_short(tmp_path, text, fragment):
    assert fragment in refused(write(tmp_path, text))


# --- overrides -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, fragment",
    [
        (
            "model=" + laughs(9).replace("\n", ", ").join("{}"),
            "more than 10000 values (aliases count as expanded)",
        ),
        ("model={a: 1, a: 2}", "duplicate key 'a'"),
        ("model=" + "[" * 100 + "]" * 100, "nested deeper than 50 levels"),
        ("model=" + "x" * (MAX_YAML_CHARS + 1), f"more than {MAX_YAML_CHARS} characters"),
        ("stages.finetune.name=../../victim", "is not a plain name"),
        ("name=..", "name: '..' is not a plain name"),
    ],
    ids=["billion-laughs", "duplicate-key", "deep", "huge", "stage-name", "recipe-name"],
)
def test_overrides_have_the_same_limits(tmp_path, override, fragment):
    message = refused(write(tmp_path, BASE), override)
    assert fragment in message and "\n" not in message


def test_an_override_that_is_not_yaml_stays_a_string(tmp_path):
    assert load_recipe(write(tmp_path, BASE), ["model=[minilm"]).model == "[minilm"


# --- the fuzz: generated malformed recipes through `cli validate` ---------------------------------

JUNK = [
    None, "", "x", -1, 0, 1.5, 1e23, 10**30, 2**64, float("inf"), float("-inf"), float("nan"), True,
    [], {}, [1, [2, [3]]], {"a": {"b": 1}}, "../../victim", "/abs/dir", ".", "..", "é☃\u202e",
    "a\nb", "x" * 5000, "~", "1e400", "finetune", "int8_dynamic",
]  # fmt: skip
SNIPPETS = [
    "[", "{a: 1, a: 2}", "&a [*a]", "[" * 80 + "]" * 80, ".inf", ".nan", "-.inf", "1e23", "-1",
    "!!python/object/apply:os.system [echo hi]", "*nope", "&a x", "? [a]\n  : b", "!!binary AAAA",
    "2024-13-45", "1" * 5000, "!!set {a, b}", "{<<: {a: 1}}", "'unterminated", "\t", "@x", "%YAML 1.1",
    "!!float x", "0x" + "f" * 40, "1:" * 3000 + "1", "{" + laughs(7).replace("\n", ", ") + "}",
]  # fmt: skip
KEYS = [
    "seed", "name", "model", "task", "data.max_seq_length", "data.max_train_samples", "data.dir",
    "data.train_length", "stages.finetune.epochs", "stages.finetune.lr", "stages.finetune.name",
    "stages.finetune.kind", "stages.soft.lambda", "stages.nope.epochs", "stages", "stages.finetune",
    "model.id", "a..b", "", "colour", "data", "stages.finetune.batch_size",
]  # fmt: skip


def _sources() -> list[dict]:
    """The small BASE and every shipped recipe, with the bundled model (and teacher) so preflight can pass."""
    raws = [yaml.safe_load(BASE)] + [yaml.safe_load(path.read_text()) for path in RECIPES]
    for raw in raws:
        raw["model"] = "minilm"
        for stage in raw["stages"]:
            stage.update({"teacher": "minilm"} if "teacher" in stage else {})
    return raws


def _containers(raw) -> list:
    """Every dict and list inside `raw`, `raw` first."""
    found, stack = [], [raw]
    while stack:
        node = stack.pop()
        if isinstance(node, dict | list):
            found.append(node)
            stack.extend(node.values() if isinstance(node, dict) else node)
    return found


def _set_junk(rng: random.Random, raw: dict) -> dict:
    node = rng.choice(_containers(raw))
    key = rng.choice(list(node)) if isinstance(node, dict) and node else None
    if key is not None:
        node[key] = copy.deepcopy(rng.choice(JUNK))
    elif isinstance(node, list) and node:
        node[rng.randrange(len(node))] = copy.deepcopy(rng.choice(JUNK))
    return raw


def _drop_key(rng: random.Random, raw: dict) -> dict:
    node = rng.choice([c for c in _containers(raw) if isinstance(c, dict) and c] or [raw])
    node.pop(rng.choice(list(node)), None)
    return raw


def _unknown_key(rng: random.Random, raw: dict) -> dict:
    rng.choice([c for c in _containers(raw) if isinstance(c, dict)])[rng.choice(["colour", "x" * 300])] = 1
    return raw


def _stages(raw: dict) -> list:
    return raw["stages"] if isinstance(raw.get("stages"), list) and raw["stages"] else [{}]


def _path_like_name(rng: random.Random, raw: dict) -> dict:
    target = rng.choice([raw, *(stage for stage in _stages(raw) if isinstance(stage, dict))])
    target["name"] = rng.choice(PATH_LIKE)
    return raw


def _reorder_stages(rng: random.Random, raw: dict) -> dict:
    stages = _stages(raw)
    stages.append(copy.deepcopy(rng.choice(stages)))
    rng.shuffle(stages)
    return raw


STRUCTURAL = [_set_junk, _drop_key, _unknown_key, _path_like_name, _reorder_stages]


def _splice(rng: random.Random, text: str) -> str:
    """One `key: value` line's value replaced by a YAML snippet."""
    lines = text.splitlines()
    keyed = [i for i, line in enumerate(lines) if ": " in line]
    i = rng.choice(keyed)
    lines[i] = lines[i].split(": ", 1)[0] + ": " + rng.choice(SNIPPETS)
    return "\n".join(lines) + "\n"


def _truncate(rng: random.Random, text: str) -> str:
    return text[: rng.randrange(len(text))]


def _duplicate_line(rng: random.Random, text: str) -> str:
    lines = text.splitlines(keepends=True)
    i = rng.randrange(len(lines))
    return "".join(lines[: i + 1] + [lines[i]] + lines[i + 1 :])


def _deep(rng: random.Random, text: str) -> str:
    depth = rng.choice([49, 51, 500, 20_000])
    return text.replace("task: ", "task: " + "[" * depth, 1).replace("\nseed", "]" * depth + "\nseed", 1)


def _aliases(rng: random.Random, text: str) -> str:
    """The laughs of a random depth, used as the first `kind` or `name`."""
    depth = rng.randrange(1, 10)
    lines = text.splitlines()
    key = rng.choice(["kind: ", "name: "])
    keyed = [i for i, line in enumerate(lines) if line.lstrip("- ").startswith(key)]
    if keyed:
        lines[keyed[0]] = lines[keyed[0]].split(": ", 1)[0] + f": *a{depth}"
    return laughs(depth) + "\n".join(lines) + "\n"


def _garbage(rng: random.Random, text: str) -> str:
    alphabet = "abc:-[]{}&*!|>'\"#%@`,?\t\n é\u2028\ufeff"
    at = rng.randrange(len(text))
    return text[:at] + "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))) + text[at:]


TEXTUAL = [_splice, _truncate, _duplicate_line, _deep, _aliases, _garbage]


def _as_bytes(rng: random.Random, text: str) -> bytes:
    """UTF-8 mostly; sometimes another encoding, random bytes spliced in, or a few bytes flipped."""
    data = bytearray(text.encode())
    choice = rng.randrange(12)
    if choice == 0:
        return text.encode(rng.choice(["utf-16", "utf-32", "cp1252"]), errors="replace")
    if choice == 1:
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randrange(1, 16))
    if choice == 2 and data:
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def _override(rng: random.Random) -> str:
    value = rng.choice([*SNIPPETS, *(yaml.safe_dump(v).removesuffix("\n...\n") for v in JUNK[:12])])
    return f"{rng.choice(KEYS)}{rng.choice(['=', '=', ''])}{value}"


def fuzz_cases(count: int, seed: int = 0) -> list[tuple[str, bytes, list[str]]]:
    """`count` (description, recipe bytes, overrides) cases mutated from the valid recipes."""
    rng = random.Random(seed)
    sources = _sources()
    cases = []
    for index in range(count):
        raw = copy.deepcopy(rng.choice(sources))
        steps, overrides = [], []
        for _ in range(rng.randrange(1, 3)):
            mutate = rng.choice(STRUCTURAL)
            steps.append(mutate.__name__)
            raw = mutate(rng, raw)
        text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=rng.random() < 0.5)
        if rng.random() < 0.6:
            mutate = rng.choice(TEXTUAL)
            steps.append(mutate.__name__)
            text = mutate(rng, text)
        if rng.random() < 0.3:
            overrides = [_override(rng) for _ in range(rng.randrange(1, 3))]
        cases.append((f"case {index}: {' '.join(steps)}", _as_bytes(rng, text), overrides))
    return cases


def test_fuzzed_recipes_end_in_ok_or_one_short_error_line(tmp_path, glue_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a model or data path that a mutation makes relative stays in here
    # Warnings stay off the root logger: a handler an earlier test's Prefect set up may still hold
    # that test's captured (now closed) stream.
    monkeypatch.setattr(logging.getLogger("compress"), "propagate", False)
    assert cli.main(["validate", str(write(tmp_path, BASE))]) == 0, "the unmutated base validates"
    capsys.readouterr()
    failures, codes = [], []
    for description, content, overrides in fuzz_cases(300):
        path = write(tmp_path, content)
        try:
            code = cli.main(["validate", str(path), *(f"--set={o}" for o in overrides)])
        except Exception as error:  # any escape is the failure this test looks for
            failures.append(f"{description} {overrides!r}: {type(error).__name__}: {str(error)[:200]}")
            continue
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error")]  # warnings may come too
        codes.append(code)
        one_short_line = len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < MAX_MESSAGE
        if "Traceback" in err or not (code == 2 and one_short_line or code == 0 and not lines):
            failures.append(f"{description} {overrides!r}: exit {code}, stderr {lines!r:.300}")
    assert not failures, f"{len(failures)} of 300 failed:\n" + "\n".join(failures[:20])
    assert codes.count(2) > 200, "most mutations are malformed"


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=" + "x" * 300],
        ["model=~nosuchuser/x"],
        ["data.dir=" + "x" * 300],
        ["data.dir=~nosuchuser/x"],
        ["stages.soft.kind=distill", "stages.soft.teacher=" + "x" * 300],
        ["stages.soft.kind=ltp_hard", "stages.soft.thresholds=" + "x" * 300],
    ],
    ids=["model-long", "model-tilde-user", "data-dir-long", "data-dir-tilde-user", "teacher", "thresholds"],
)
def test_path_values_the_os_refuses_are_one_line(tmp_path, glue_dir, capsys, overrides):
    code = cli.main(["validate", str(write(tmp_path, BASE)), *(f"--set={o}" for o in overrides)])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
