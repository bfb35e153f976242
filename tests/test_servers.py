"""pipelines.servers' file lock: exclusive across processes, on the given path, released on exit."""

import subprocess
import sys

from pipelines.servers import exclusive_lock

# Another process tries the lock for 0.2 s: exit 0 if it got it, 1 if it timed out.
_TRY_LOCK = """
import sys
from filelock import FileLock, Timeout
try:
    FileLock(sys.argv[1]).acquire(timeout=0.2)
except Timeout:
    sys.exit(1)
"""


def _other_process_gets(path) -> bool:
    return subprocess.run([sys.executable, "-c", _TRY_LOCK, str(path)], timeout=60).returncode == 0


def test_exclusive_lock_keeps_other_processes_out_until_the_block_ends(tmp_path):
    path = tmp_path / "store.db.lock"
    with exclusive_lock(path):
        assert path.is_file()  # the lock file is `path` itself
        assert not _other_process_gets(path)
    assert _other_process_gets(path)
