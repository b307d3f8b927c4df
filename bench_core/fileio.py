"""Safe file writes shared by the report, the exports and the checkpoints, and their cleanup.

Several processes may write the same output folder at once (three ``bench report DIR``,
two ``bench run`` sharing an output dir), and a browser may read a page while it is
rewritten. Every write therefore goes to a temporary file with a name no other writer
uses, in the same folder (so the rename never crosses a filesystem), and is renamed over
the target: a reader sees the old file or the new one, never half of either.

A writer killed before its rename leaves its temporary behind; the owner's pid is part
of the name (``.<name>.<pid>.<random>.tmp``), so :func:`remove_stale_temporaries` can
tell an abandoned one from one still being written.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

# ".<name>.<pid>.tmp" (the runner's embedded-data folders) or ".<name>.<pid>.<random>.tmp" (temporary_name).
_OWNER = re.compile(r"\.(?P<pid>\d+)(?:\.[0-9a-f]+)?\.tmp$")


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` no other writer uses: ``.<name>.<pid>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def replace_atomically(path: str | Path, write: Callable[[Path], object], *, durable: bool = True) -> None:
    """Call ``write(tmp)`` on a fresh temporary sibling of ``path``, then rename it over ``path``.

    For writers that want a file name (``torch.save``, ``safetensors.save_file``); plain
    data goes through :func:`write_atomic`. Creates the parent folder. On any failure the
    temporary file is removed and the error propagates, leaving ``path`` as it was.

    Args:
        durable: fsync the file before the rename, so that a power cut cannot leave an empty
            file behind. Files rebuilt from the store on every run (report pages) pass False:
            the rename alone keeps readers safe, and an fsync per page would slow large reports.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: str | Path, data: str | bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8) so that no reader ever sees it half written.

    See :func:`replace_atomically` for ``durable`` and what happens on failure.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    replace_atomically(path, lambda tmp: tmp.write_bytes(payload), durable=durable)


def remove_stale_temporaries(folder: Path, pattern: str = ".*.tmp", older_than_s: float = 24 * 3600) -> list[Path]:
    """Delete the temporaries (files or folders) matching ``pattern`` in ``folder`` that nobody will finish.

    One is stale when the pid in its name is no process of this machine (its writer was
    killed), or when it is older than ``older_than_s`` (its pid since reused, or a name
    without one). The pid test only knows this machine: a folder shared with another machine
    that writes into it at the same moment (a cluster's home directory) may lose a
    temporary still being written there. Returns what was removed; a missing folder, or an
    entry that vanishes meanwhile (another cleaner), is not an error.
    """
    removed = []
    now = time.time()
    for entry in folder.glob(pattern) if folder.is_dir() else []:
        owner = _OWNER.search(entry.name)
        try:
            old = now - entry.lstat().st_mtime > older_than_s
        except FileNotFoundError:
            continue
        if not old and (owner is None or pid_alive(int(owner["pid"]))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when that cannot be told)."""
    if os.name == "nt":  # signal 0 is CTRL_C_EVENT there, not a probe: leave it to the age rule
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
