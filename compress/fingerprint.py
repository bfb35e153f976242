"""What local data files and model folders contribute to a stage's cache key: their content.

The same files reached another way (a relative or absolute path, a link, GLUE_DIR or --data-dir)
give the same digests, so they reuse the cache; one changed byte does not.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from compress.data.files import require_file
from compress.data.sources import HUB_ID, glue_files, resolve_data_dir
from compress.data.tasks import get_task
from compress.models import resolve_model
from compress.recipe import Recipe


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read once per process while its size and mtime stay the same."""
    stat = path.stat()
    return _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4096)  # bounded: a long `serve` sees files change between runs
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as file:  # streamed in chunks: weights can be hundreds of MB
        return hashlib.file_digest(file, "sha256").hexdigest()


def folder_digest(folder: Path) -> str:
    """SHA-256 over a folder's files: sorted relative names and each file's digest. Hidden entries
    (`.git`, the hub's `.cache`) are left out: they hold download metadata, not the model."""
    digest = hashlib.sha256()
    files = {
        path.relative_to(folder).as_posix(): path
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    }
    for name in sorted(files):
        digest.update(f"{name}\0{file_digest(files[name])}\n".encode())
    return digest.hexdigest()


def model_identity(name: str) -> str | dict:
    """What a model contributes to a cache key: a local folder's content digest, else its name (a
    hub id, or the alias `minilm`: the folder of an installed package, which its name pins)."""
    if name == "minilm":
        return name
    source = Path(resolve_model(name))
    return {"sha256": folder_digest(source)} if source.is_dir() else name


def data_identity(recipe: Recipe, need_train: bool) -> dict:
    """What the data contributes to a cache key: the digest of each file the run reads (a GLUE
    folder's train/dev files of the task, or task custom's train_file/eval_file with the suffix
    that picks their format), else the hub dataset's id. The train file counts if `need_train`."""
    if recipe.task == "custom":
        names = {"train": recipe.data.train_file if need_train else None, "validation": recipe.data.eval_file}
        files = {split: Path(name) for split, name in names.items() if name}
        for split, path in files.items():
            require_file(path, f"data.{'eval' if split == 'validation' else split}_file: data file")
        return {split: {"suffix": p.suffix.lower(), "sha256": file_digest(p)} for split, p in files.items()}
    data_dir = resolve_data_dir(recipe.data.dir)
    if data_dir is None:
        return {"hub": HUB_ID}
    task = get_task(recipe.task)
    files = glue_files(task, data_dir, need_train)
    for split, path in files.items():
        require_file(path, f"task {task.name} ({split} split): data file")
    return {split: {"sha256": file_digest(path)} for split, path in files.items()}
