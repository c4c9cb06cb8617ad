"""Writing files so that readers never see half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | Path, data: bytes | Callable[[IO[bytes]], None], *, mode: int = 0o644) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary file) to a temporary file beside ``path``, sync
    it, then rename it over ``path``: readers see the old file or the new one, and a failure leaves the old one.
    The file gets ``mode`` (a temporary file is created 0600, which other users of a shared run folder could not
    read)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
