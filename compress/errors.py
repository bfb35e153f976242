"""The one exception type for user mistakes, and reading a JSON file a user may have spoilt."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError

T = TypeVar("T")


class UserError(Exception):
    """A mistake in user input (recipe, path, override, data).

    The message says what is wrong and where; the CLI prints it on one line and exits 2.
    """


def read_json_as(path: Path, schema: type[T]) -> T:
    """`path` validated as `schema` (strict: no "1" for 1). A file that cannot be read, is not
    JSON or does not fit is a UserError naming the file, the key and the problem."""
    try:
        return TypeAdapter(schema).validate_json(Path(path).read_bytes(), strict=True)
    except OSError as error:
        raise UserError(f"{path}: cannot read it ({error.strerror or error})") from None
    except ValidationError as error:
        raise UserError(f"{path}: {_first_problem(error)}") from None


def _first_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = {
        "extra_forbidden": "unknown key",
        "unexpected_keyword_argument": "unknown key",
        "missing": "required key is missing",
        "missing_argument": "required key is missing",
    }.get(first["type"], first["msg"])
    return f"{key}: {message}" if key else message


class Stopped(BaseException):
    """The run was stopped by a signal (Ctrl-C's SIGINT, or SIGTERM). A BaseException, like
    KeyboardInterrupt, so no `except Exception` swallows it and every layer unwinds: runs are
    marked KILLED, scratch folders removed, child processes stopped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
