"""The servers a pipeline talks to, checked before any training; a problem is one line.

MLflow's check lives in `tracking.check_tracking` (it also covers SQLite stores); this module
has the HTTP probe both use and the Prefect API's check (or start, for the local one).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from compress.errors import UserError

HEALTH_TIMEOUT_S = 2.0
PR_SET_PDEATHSIG = 1  # prctl(2)
START_PREFECT = "run `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api"


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` across processes; released on exit.

    filelock's FileLock: flock(2) on Linux and macOS, msvcrt's lock on Windows; waits as long as it takes.
    """
    with FileLock(path):
        yield


def probe(health_url: str) -> str | None:
    """Why `health_url` does not answer ("unreachable (...)", "not healthy (HTTP 5xx)"), or None.

    A 4xx answer counts as up: something answers (auth, a path prefix) and reports details itself.
    """
    try:
        with urllib.request.urlopen(health_url, timeout=HEALTH_TIMEOUT_S):
            return None
    except urllib.error.HTTPError as error:
        return f"not healthy (HTTP {error.code})" if error.code >= 500 else None  # e.g. a proxy's 502
    except (OSError, ValueError) as error:
        return f"unreachable ({getattr(error, 'reason', error)})"


def prefect_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile; None: a temporary local API."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def ensure_prefect_api(need_server: bool = False) -> str:
    """The Prefect API runs will report to; returns its URL.

    PREFECT_API_URL's server must answer (fail fast, one line). Without it, Prefect's temporary
    local API is started now (unless `need_server`: then that is the error), holding a lock in
    PREFECT_HOME: runs that start together would otherwise migrate its new database at once and
    one would fail ("duplicate column name").
    """
    url = prefect_api_url()
    if url is None:
        if need_server:
            raise UserError(f"serving needs a running Prefect server: {START_PREFECT}")
        return _start_local_api()
    problem = probe(url.rstrip("/") + "/health")
    if problem is not None:
        fallback = "" if need_server else ", or unset PREFECT_API_URL to use a temporary local API"
        raise UserError(f"Prefect API {url} is {problem}: start it (`prefect server start`){fallback}")
    return url


def _start_local_api() -> str:
    """Start (once per process) the temporary local API that Prefect would start on first use."""
    from prefect.settings import PREFECT_HOME

    home = PREFECT_HOME.value()
    home.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home / "local-api.lock"):
        server = _local_api_server()  # one per process; Prefect's client reuses it
        server.start()
    return server.api_url


def _local_api_server():
    """Prefect's SubprocessASGIServer, its uvicorn child tied to this process: in a session of its
    own, so a Ctrl-C to the terminal's process group reaches only us (and we stop it in order), and
    with a parent-death signal, so it ends with us even when we are killed outright (Linux)."""
    from prefect.server.api.server import SubprocessASGIServer

    class TiedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            with _tied_children():
                return super()._run_uvicorn_command()

    return TiedServer()


@contextmanager
def _tied_children() -> Iterator[None]:
    """Within the block, subprocess.Popen starts children in their own session that get SIGTERM
    when this process dies. (Prefect's server class offers no Popen options of its own.)"""
    popen = subprocess.Popen
    subprocess.Popen = functools.partial(popen, start_new_session=True, preexec_fn=_die_with_parent)
    try:
        yield
    finally:
        subprocess.Popen = popen


def _die_with_parent() -> None:
    """In the child, before exec: ask the kernel for SIGTERM when the parent dies (no-op off Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
