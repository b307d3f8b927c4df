"""Safe file writes shared by the report, the exports and the checkpoints.

Several processes may write the same output folder at once (three ``bench report DIR``,
two ``bench run`` sharing an output dir), and a browser may read a page while it is
rewritten. Every write therefore goes to a temporary file with a name no other writer
uses, in the same folder (so the rename never crosses a filesystem), and is renamed over
the target: a reader sees the old file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` no other writer uses: ``.<name>.<pid>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def write_atomic(path: str | Path, data: str | bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8) so that no reader ever sees it half written.

    Creates the parent folder. On any failure the temporary file is removed and the error
    propagates, leaving ``path`` as it was.

    Args:
        durable: fsync the data before the rename, so that a power cut cannot leave an empty
            file behind. Files rebuilt from the store on every run (report pages) pass False:
            the rename alone keeps readers safe, and an fsync per page would slow large reports.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = temporary_name(path)
    try:
        # os.open with 0o666 (not mkstemp's 0o600): the file gets the permissions the umask gives any new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
