"""The stages of a run tokenise their data once: `prepare_data` reuses what it made for the same
files, settings and tokenizer, and only that."""

from transformers import AutoTokenizer

from compress.data.task_data import prepare_data
from compress.recipe import parse_recipe
from tests.tiny_runs import write_glue


def recipe_for(glue, **data):
    raw = {
        "name": "cache",
        "model": "minilm",
        "task": "sst2",
        "data": {"dir": str(glue), **data},
        "stages": [{"name": "finetune", "kind": "finetune"}],
    }
    return parse_recipe(raw, "cache")


def test_the_same_data_is_tokenised_once_and_changed_data_again(tmp_path, tiny_model_dir):
    glue = write_glue(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    first = prepare_data(recipe_for(glue), tokenizer)
    again = AutoTokenizer.from_pretrained(tiny_model_dir)  # another object, the same definition
    assert prepare_data(recipe_for(glue), again) is first
    assert prepare_data(recipe_for(glue, max_seq_length=16), tokenizer) is not first
    dev = glue / "SST-2" / "dev.tsv"
    dev.write_text(dev.read_text().replace("good", "bad"))
    changed = prepare_data(recipe_for(glue), tokenizer)
    assert changed is not first and changed.evals["validation"] != first.evals["validation"]
