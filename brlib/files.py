"""Atomic writes of files: a reader sees the old file or the new one, never half of one.

A module of its own, with no brlib import, so that the dataset modules
(`brlib.glyphs`), the result files (`brlib.results`), the runner
(`brlib.experiment`) and the results page write files one way without
importing each other.
"""

import os
from pathlib import Path


def write_atomic(path, payload):
    """Writes bytes to `path` through a temporary file and a rename.

    The parent directories are created. The temporary file sits beside `path`
    (so the rename stays on one file system) and is named after this process,
    so that two writers of the same file (the workers of a cluster recording
    the same settings) never move each other's temporary file. A write that
    fails removes its temporary file and leaves `path` as it was.

    Args:
        path: The file to write, a str or path.
        payload: The bytes to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
