"""One whoharry process at a time in a run folder: an OS file lock, and a file naming its holder.

The lock is `filelock.FileLock` on `OUT/.whoharry.flock` (`fcntl.flock` on Unix), taken without waiting:
the operating system releases it when its process ends, however it ends, so a killed run never leaves it
held. The lock file itself holds nothing (filelock opens it truncated), so the holder's identity, process
id, host and start time, is written beside it to `OUT/.whoharry.lock`, a small JSON file, while the lock is
held. A second process finds the lock taken and stops with a message naming the holder.

The holder file is honoured too, for a holder the OS lock cannot see (a process on another host of a
network file system, where flock may not reach): when it names a live process on this host, or any process
of another host, the folder is in use. One naming a process that is gone, or left unreadable by a kill
mid-write, is stale: it is replaced, with a warning. Both are read and replaced under the OS lock, so two
processes never take over the same stale file.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from whoharry.core import artifacts
from whoharry.errors import WhoharryError

log = logging.getLogger(__name__)

LOCK = ".whoharry.lock"  # the holder's identity, JSON
FLOCK = ".whoharry.flock"  # the OS lock


def _holder(path: Path) -> dict[str, Any] | None:
    """The holder file's contents, or None when it cannot be read as one (a writer killed mid-write)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the holder may still run: true unless it is on this host and its pid is gone."""
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _in_use(out: Path, path: Path, holder: dict[str, Any] | None) -> WhoharryError:
    who = (f"pid {holder['pid']} on {holder.get('host')}, since {holder.get('started')}" if holder
           else "pid not yet written")
    return WhoharryError(f"{out} is in use by another whoharry process ({who}); wait for it to end, or delete "
                         f"{path} if that process is gone")


@contextmanager
def hold(out: Path) -> Iterator[Path]:
    """Hold the run folder's lock for the duration of the block (creating the folder). A stale holder file
    is replaced with a warning; the holder file is removed at the end only if it still names this process,
    and a folder this call created is removed with the lock when nothing else was written there.

    Yields:
        The holder file's path, `out/.whoharry.lock`.

    Raises:
        WhoharryError: another live process (or one on another host) holds the lock.
    """
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    lock = FileLock(out / FLOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise _in_use(out, path, _holder(path)) from None
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        if path.exists():
            holder = _holder(path)
            if holder is not None and _alive(holder):
                raise _in_use(out, path, holder)
            log.warning("removing a stale lock in %s (%s)", out,
                        f"pid {holder['pid']} is gone" if holder else "unreadable lock file")
        artifacts.atomic_write_text(path, json.dumps(mine))
        yield path
    finally:
        if (_holder(path) or {}).get("pid") == mine["pid"]:
            path.unlink(missing_ok=True)
        # a run that wrote nothing leaves no lock file and, when it made the folder, no folder
        if {entry.name for entry in out.iterdir()} <= {FLOCK}:
            (out / FLOCK).unlink(missing_ok=True)
            if made:
                out.rmdir()
        lock.release()
