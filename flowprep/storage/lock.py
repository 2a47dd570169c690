"""An exclusive lock on a folder that one process writes (a flow store, a training run).

``flock`` on ``FOLDER/.lock``: the kernel drops it when the holder exits, however it exits (kill -9
included), so a lock never outlives its process. The holder writes its pid and command line into the
file so that a refused process can say who holds it.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

from flowprep.errors import UserError

LOCK_FILE = ".lock"
_HELD: set[int] = set()  # descriptors of the locks this process holds


def _close_in_child() -> None:
    # A forked child (a DataLoader worker) shares the parent's lock; closing its copy means the lock
    # dies with the parent, not with the last of its children.
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class FolderBusyError(UserError):
    """Another live process holds the folder's lock; the message names the folder and that process."""


def _holder(fd: int) -> str:
    """Who holds a lock, from its file: "flowprep extract (pid 12: flowprep extract a b)". The file holds
    the pid, the kind of writer and the command line, a line each (files of older versions: no kind)."""
    try:
        lines = os.pread(fd, 4096, 0).decode(errors="replace").strip().splitlines()
    except OSError:
        return "process"
    if not lines or not lines[0].isdigit():
        return "process"
    pid, rest = lines[0], lines[1:]
    what, command = (rest[0], rest[1]) if len(rest) > 1 else ("process", "".join(rest))
    return f"{what} (pid {pid}" + (f": {command}" if command else "") + ")"


def lock_holder(folder: str | os.PathLike) -> str | None:
    """Who holds ``folder``'s lock now (see :func:`_holder`), or None where nobody does. Only looks:
    never creates the lock file (a reader may not be allowed to write the folder)."""
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class FolderLock:
    """Hold ``folder``'s lock until :meth:`release` (or exit). ``what`` names the kind of writer
    (``flowprep extract``, ``trainer fit``); it goes into the lock file, so a process refused names the
    holder's kind, not its own. ``remove``: delete the lock file on release (a folder that belongs to
    another tool, such as an export's, is left as it was); a process that locked the file just before
    it went sees that it is no longer the folder's lock file and takes the new one."""

    def __init__(self, folder: str | os.PathLike, what: str, remove: bool = False):
        self.folder, self.remove = Path(folder), remove
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        while True:
            # no O_TRUNC: opening must not wipe the holder's pid before we know we own the lock
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(self._fd)
                os.close(self._fd)
                self._fd = None
                raise FolderBusyError(f"{self.folder}: in use by another {holder}; wait for it to end or stop it, "
                                      "or use another folder") from None
            try:
                if os.stat(path).st_ino == os.fstat(self._fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(self._fd)  # a holder that removes its lock file unlinked it before we locked: again
        _HELD.add(self._fd)
        command = " ".join(sys.argv)[:300].replace("\n", " ")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n{what}\n{command}\n".encode(), 0)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            if self.remove:  # while still held: whoever opened this file before sees it is gone
                try:
                    os.unlink(self.folder / LOCK_FILE)
                except FileNotFoundError:
                    pass
            _HELD.discard(self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
