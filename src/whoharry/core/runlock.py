"""One whoharry process at a time in a run folder: a lock file naming its holder, safe against stale locks.

The lock is `OUT/.whoharry.lock`, created exclusively, holding the process id, host and start time. A
second process finds it and stops with a message naming the holder. A lock whose process is gone (same
host, no such process; or a file left unreadable by a kill mid-write) is stale: it is replaced, with a
warning. A lock from another host cannot be checked and is honoured.
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

from whoharry.errors import WhoharryError

log = logging.getLogger(__name__)

LOCK = ".whoharry.lock"


def _holder(path: Path) -> dict[str, Any] | None:
    """The lock's contents, or None when it cannot be read as a lock (a writer killed mid-write)."""
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


@contextmanager
def hold(out: Path) -> Iterator[Path]:
    """Hold the run folder's lock for the duration of the block (creating the folder). A stale lock is
    replaced with a warning; the lock is removed at the end only if it still names this process, and a
    folder this call created is removed with it when nothing else was written there.

    Yields:
        The lock file's path, `out/.whoharry.lock`.

    Raises:
        WhoharryError: another live process (or one on another host) holds the lock.
    """
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and _alive(holder):
                raise WhoharryError(
                    f"{out} is in use by another whoharry process (pid {holder['pid']} on {holder.get('host')}, "
                    f"since {holder.get('started')}); wait for it to end, or delete {path} if that process is gone"
                ) from None
            log.warning("removing a stale lock in %s (%s)", out,
                        f"pid {holder['pid']} is gone" if holder else "unreadable lock file")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(mine, handle)
        break
    try:
        yield path
    finally:
        if (_holder(path) or {}).get("pid") == mine["pid"]:
            path.unlink(missing_ok=True)
            if made and not any(out.iterdir()):  # a run that failed before writing anything leaves no folder
                out.rmdir()
