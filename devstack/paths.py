"""Where the stack puts its sockets."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def short_temp_dir() -> Iterator[Path]:
    """A temp dir with a short path: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fa-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
