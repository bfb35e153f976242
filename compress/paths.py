"""Names that become paths, and the output folders a run writes into.

A stage name becomes `OUT/stages/<name>`, a recipe name `artifacts/<name>`, a sweep value
`OUT/<key>=<value>`: each must be one plain path component, so nothing a recipe says can reach
outside the folder it is written under.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from compress.errors import UserError

SIMPLE_NAME_HINT = "1-64 letters, digits, '_', '.', '=', '+' or '-', starting with a letter or digit"
_SIMPLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]{0,63}")  # no separators, no leading dot: never "." or ".."


def is_simple_name(name: object) -> bool:
    """Whether `name` is one plain path component (see SIMPLE_NAME_HINT)."""
    return isinstance(name, str) and _SIMPLE.fullmatch(name) is not None


def check_simple_name(name: str, what: str) -> str:
    """`name` when it is one plain path component, else a UserError naming `what`."""
    if not is_simple_name(name):
        shown = repr(name)[:80]
        raise UserError(f"{what}: {shown} is not a plain name ({SIMPLE_NAME_HINT})")
    return name


def check_output_dir(path: Path, what: str = "--out", ours: tuple[str, ...] = ()) -> Path:
    """Refuse an output folder that cannot be written, before any work starts; creates nothing.

    `path` may be missing (its nearest existing ancestor must then be a writable folder). An
    existing folder must be writable and either empty or hold one of `ours` (what an earlier run
    of ours left there), so a run never overwrites files of someone else's.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path}: exists and is not a folder")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {existing} is not writable (read-only or no permission)")
    if existing == path and ours and any(path.iterdir()) and not any((path / n).exists() for n in ours):
        raise UserError(
            f"{what} {path}: a folder with other files in it (none of {', '.join(ours)}); "
            "give a new or empty folder"
        )
    return path


def user_path(text: str, what: str) -> Path:
    """`text` as a local path (`~` expanded), or a UserError naming `what` when the OS cannot take
    it as one (a name too long, an unknown user's `~`, a NUL byte)."""
    try:
        path = Path(text).expanduser()
        path.exists()  # raises for names the OS refuses
    except (OSError, RuntimeError, ValueError) as error:
        reason = getattr(error, "strerror", None) or error
        raise UserError(f"{what}: {str(text)[:80]!r} is not a usable path ({reason})") from None
    return path
