"""Seeded fuzz of data files through `cli validate`: a few hundred malformed CSV, TSV, JSON and JSONL
files (task `custom`) and GLUE-layout TSVs (`--data-dir`), each of which must end in exit 0 or
in exit 2 with one short `error:` line, never a traceback."""

import json
import logging
import random

import yaml

import cli
from tests.conftest import REPO
from tests.test_recipe_hostile import MAX_MESSAGE

ROWS = [("a gripping film", "yes", 1), ("dull and lifeless", "no", 0), ("fine, fine", "maybe", 1)] * 4
JUNK_VALUES = [
    None, True, "", "1.0", " 1 ", 1.5, 2, -1, "NaN", "inf", [1], {"a": 1}, "x" * 200_000, "caf\xe9",
    "\u2028", "\x00", "\"", "a\tb", "a\nb", "9" * 5000,
]  # fmt: skip


def _valid(rng: random.Random, suffix: str) -> str:
    """A valid file of ROWS (columns text, text_pair, label) in the format of `suffix`."""
    rows = [{"text": t, "text_pair": p, "label": label} for t, p, label in ROWS]
    if suffix == ".json":
        return json.dumps(rows)
    if suffix == ".jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    sep = "\t" if suffix == ".tsv" else ","
    return (
        "text"
        + sep
        + "text_pair"
        + sep
        + "label\n"
        + "".join(sep.join([t, p, str(label)]) + "\n" for t, p, label in ROWS)
    )


def _mutate_rows(rng: random.Random, suffix: str) -> str:
    """Structured damage: a junk value in a random cell, a dropped column, or a duplicated header."""
    rows = [{"text": t, "text_pair": p, "label": label} for t, p, label in ROWS]
    for _ in range(rng.randrange(1, 4)):
        row = rng.choice(rows)
        key = rng.choice(["text", "text_pair", "label", "extra"])
        if rng.random() < 0.2:
            row.pop(key, None)
        else:
            row[key] = rng.choice(JUNK_VALUES)
    if suffix == ".json":
        return json.dumps(rows if rng.random() < 0.9 else rng.choice([rows[0], 3, "x", None]))
    if suffix == ".jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    sep = "\t" if suffix == ".tsv" else ","
    header = rng.choice([["text", "text_pair", "label"], ["text", "text", "label"], ["label"], []])
    lines = [sep.join(header)] + [
        sep.join(str(row.get(k, "")) for k in ("text", "text_pair", "label")) for row in rows
    ]
    return "\n".join(lines) + "\n"


def _mutate_bytes(rng: random.Random, content: bytes) -> bytes:
    """Byte damage: truncation, random bytes spliced in, another encoding, or nothing at all."""
    data = bytearray(content)
    choice = rng.randrange(6)
    if choice == 0:
        return bytes(data[: rng.randrange(len(data) + 1)])
    if choice == 1:
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randrange(1, 32))
    if choice == 2:
        return content.decode().encode(rng.choice(["utf-16", "latin-1", "cp1252"]), errors="replace")
    if choice == 3:
        return b""
    return bytes(data)


def fuzz_files(count: int, seed: int = 0) -> list[tuple[str, str, bytes]]:
    """`count` (description, suffix, content) malformed data files."""
    rng = random.Random(seed)
    cases = []
    for index in range(count):
        suffix = rng.choice([".csv", ".tsv", ".json", ".jsonl"])
        text = _mutate_rows(rng, suffix) if rng.random() < 0.6 else _valid(rng, suffix)
        cases.append((f"case {index} ({suffix})", suffix, _mutate_bytes(rng, text.encode())))
    return cases


def _custom_recipe(folder, model, train, dev) -> str:
    recipe = {
        "name": "fuzz",
        "model": str(model),
        "task": "custom",
        "data": {"train_file": str(train), "eval_file": str(dev), "text_pair_column": "text_pair"},
        "stages": [{"name": "finetune", "kind": "finetune", "epochs": 1}],
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _one_line_or_ok(code: int, err: str) -> bool:
    """Exit 2 with exactly one short `error:` line, or exit 0 with none; warnings may come too."""
    errors = [line for line in err.splitlines() if line.startswith("error")]
    if "Traceback" in err:
        return False
    return code == 2 and len(errors) == 1 and len(errors[0]) < MAX_MESSAGE or code == 0 and not errors


def test_fuzzed_custom_data_files_end_in_ok_or_one_line(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    failures, codes = [], []
    for description, suffix, content in fuzz_files(200):
        train, dev = tmp_path / f"train{suffix}", tmp_path / f"dev{suffix}"
        train.write_bytes(content)
        dev.write_bytes(_valid(random.Random(0), suffix).encode())
        recipe = _custom_recipe(tmp_path, tiny_model_dir, train, dev)
        capsys.readouterr()
        try:
            code = cli.main(["validate", recipe])
        except BaseException as error:  # noqa: BLE001 - the test's point: nothing may escape
            failures.append(f"{description}: {type(error).__name__}: {error!s:.200}")
            continue
        codes.append(code)
        err = capsys.readouterr().err
        if not _one_line_or_ok(code, err):
            failures.append(f"{description}: exit {code}, stderr {err!r:.300}")
    assert not failures, f"{len(failures)} of 200 failed:\n" + "\n".join(failures[:20])
    assert codes.count(2) > 100 and codes.count(0) > 5, "mostly malformed, some still valid"


def test_fuzzed_glue_files_end_in_ok_or_one_line(tmp_path, capsys, monkeypatch):
    """SST-2 train.tsv of a GLUE-layout folder, damaged; the recipe is the shipped quickstart. (The
    "skipped rows" warnings stay off stderr: a handler an earlier test's Prefect set up may still
    hold an earlier test's captured stream.)"""
    monkeypatch.setattr(logging.getLogger("compress"), "propagate", False)
    rng = random.Random(1)
    sst2 = tmp_path / "glue" / "SST-2"
    sst2.mkdir(parents=True)
    good = "sentence\tlabel\n" + "".join(f"{t}\t{label}\n" for t, _, label in ROWS)
    (sst2 / "dev.tsv").write_text(good)
    failures, codes = [], []
    for index in range(100):
        lines = good.splitlines()
        at = rng.randrange(len(lines))
        lines[at] = rng.choice(
            [lines[at] + "\textra", "\t".join(["x", str(rng.choice(JUNK_VALUES))]), "", "\t"]
        )
        content = _mutate_bytes(rng, ("\n".join(lines) + "\n").encode())
        (sst2 / "train.tsv").write_bytes(content)
        capsys.readouterr()
        code = cli.main(
            ["validate", str(REPO / "recipes/quickstart.yaml"), "--data-dir", str(tmp_path / "glue")]
        )
        codes.append(code)
        err = capsys.readouterr().err
        if not _one_line_or_ok(code, err):
            failures.append(f"case {index}: exit {code}, stderr {err!r:.300}")
    assert not failures, "\n".join(failures[:20])
    assert codes.count(2) > 20 and codes.count(0) > 20, "some damage is refused, some (a skipped row) is not"
