"""Writing many received chunks into a chunk store, durably and fast.

The store's own ``put`` fsyncs every chunk file before renaming it into
place (docs/format.md §4). For a transfer of 10⁵ small chunks that is 10⁵
fsyncs, each a disk round trip. :class:`BulkChunkWriter` keeps the same
guarantee per batch: it writes each chunk to ``chunks/tmp/`` (in parallel,
from the transfer threads), makes all of them durable with one ``syncfs``
of the store's filesystem, renames them into place and fsyncs the fan-out
directories. A chunk is therefore never visible under its name before its
bytes are durable, and an interruption leaves only temporary files (removed
by ``gc``). Callers verify every chunk against its digest before adding it.

Transfers now write packs (:meth:`mrepo.store.chunks.ChunkStore.pack_writer`);
this writer remains for callers that want loose files.
"""

from __future__ import annotations

import ctypes
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from ..store.atomic import fsync_dir
from ..errors import CorruptObject
from ..store.chunks import ChunkStore
from ..store.digest import is_digest

__all__ = ["BulkChunkWriter", "syncfs"]

try:
    _syncfs = ctypes.CDLL(None, use_errno=True).syncfs
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _syncfs = None


def syncfs(path: os.PathLike | str) -> None:
    """Flush every written page of the filesystem holding ``path`` to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _syncfs is not None and _syncfs(fd) == 0:
            return
        os.sync()
    finally:
        os.close(fd)


class BulkChunkWriter:
    """Thread-safe batched writer of verified chunks into a :class:`ChunkStore`."""

    def __init__(self, store: ChunkStore, *, batch_bytes: int = 512 << 20, batch_count: int = 50_000) -> None:
        self.store = store
        self.batch_bytes = batch_bytes
        self.batch_count = batch_count
        self._pending: list[tuple[str, str]] = []  # (tmp path, digest)
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.written = 0
        self._root = str(store.root)
        self._tmp = str(store.tmp)
        self._dirs: set[str] = set()
        store.tmp.mkdir(parents=True, exist_ok=True)

    def add(self, digest: str, data: bytes | memoryview) -> None:
        if not is_digest(digest):
            raise CorruptObject("malformed chunk digest", digest)
        try:
            os.utime(f"{self._root}/{digest[:2]}/{digest[2:]}", None)  # there: protect it from gc, as put() does
            return
        except FileNotFoundError:
            pass
        tmp = f"{self._tmp}/{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            view = memoryview(data).cast("B")
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        with self._lock:
            self._pending.append((tmp, digest))
            self._pending_bytes += len(view)
            full = len(self._pending) >= self.batch_count or self._pending_bytes >= self.batch_bytes
        if full:
            self.flush()

    def flush(self) -> None:
        with self._flush_lock:
            with self._lock:
                batch, self._pending, self._pending_bytes = self._pending, [], 0
            if not batch:
                return
            syncfs(self.store.root)
            dirs = set()
            for tmp, digest in batch:
                d = f"{self._root}/{digest[:2]}"
                if d not in self._dirs:
                    os.makedirs(d, exist_ok=True)
                    self._dirs.add(d)
                os.replace(tmp, f"{d}/{digest[2:]}")
                dirs.add(d)
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(fsync_dir, sorted(dirs)))
            self.written += len(batch)

    def discard(self) -> None:
        """Drop what is pending (after a failure): remove the temporary files."""
        with self._lock:
            batch, self._pending, self._pending_bytes = self._pending, [], 0
        for tmp, _ in batch:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "BulkChunkWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.flush()
        else:
            # chunks already verified are worth keeping: a re-run skips them
            try:
                self.flush()
            except OSError:
                self.discard()
