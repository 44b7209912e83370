"""Durable, atomic file operations and inter-process locks.

Every file mrepo writes into a repository goes through :func:`atomic_write`
(temporary file in the same directory, write, fsync, rename, fsync of the
directory), so a process killed at any instant leaves either the old or the new
file, never a torn one. Locks are ``flock`` locks: the kernel drops them when
the holder dies, so a killed process never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from ..errors import LockError

__all__ = ["fsync_dir", "atomic_write", "FileLock", "write_temp_then_rename", "write_new_synced", "crashpoint"]

_CRASHPOINT = os.environ.get("MREPO_CRASHPOINT")


def crashpoint(name: str) -> None:
    """Kill this process with SIGKILL at the named point when the environment
    variable ``MREPO_CRASHPOINT`` names it (crash-safety tests only)."""
    if _CRASHPOINT == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that the renames and creations in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_synced(path: str | os.PathLike[str], data: bytes | bytearray | memoryview, *, mode: int = 0o444) -> None:
    """Create ``path`` (it must not exist), write all of ``data``, fsync and close it; on any
    error the partial file is removed. The caller renames it into place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        Path(path).unlink(missing_ok=True)
        raise
    os.close(fd)


def write_temp_then_rename(
    target: str | os.PathLike[str],
    data: bytes | bytearray | memoryview,
    *,
    tmp_dir: str | os.PathLike[str] | None = None,
    tmp_prefix: str = ".tmp-",
    sync_dir: bool = True,
) -> None:
    """Write ``data`` to a temporary file, fsync it and rename it onto ``target``.

    ``tmp_dir`` must be on the same filesystem as ``target`` (default: its
    directory). With ``sync_dir`` the target's directory is fsynced too;
    callers that write many files into a few directories may pass False and
    fsync the directories once at the end.
    """
    target = Path(target)
    directory = Path(tmp_dir) if tmp_dir is not None else target.parent
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync_dir:
        fsync_dir(target.parent)


def atomic_write(target: str | os.PathLike[str], data: bytes | str) -> None:
    """Atomically and durably replace ``target`` with ``data``."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    write_temp_then_rename(target, data)


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if needed).

    Parameters
    ----------
    path:
        Lock file.
    timeout:
        Seconds to wait for the lock; then :class:`~mrepo.errors.LockError`
        (a retryable error) is raised. ``0`` fails at once.
    what:
        Name of the thing being locked, for the error message.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0, what: str = "repository") -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.what = what
        self._fd: int | None = None
        self._depth = 0
        self._thread_lock = threading.RLock()

    def acquire(self) -> None:
        if not self._thread_lock.acquire(timeout=self.timeout if self.timeout > 0 else -1):
            raise LockError(f"{self.what} is locked by another thread; try again", str(self.path))
        if self._fd is not None:
            self._depth += 1
            return
        try:
            self._acquire_flock()
        except BaseException:
            self._thread_lock.release()
            raise

    def _acquire_flock(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockError(
                        f"{self.what} is locked by another mrepo process; try again", str(self.path)
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        self._fd = fd
        self._depth = 1

    def release(self) -> None:
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            self._thread_lock.release()
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            self._thread_lock.release()

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
