"""The chunk store: encoded array chunks addressed by their BLAKE3 digest.

Layout (see docs/format.md): ``<root>/<d[0:2]>/<d[2:]>`` for a digest ``d``;
temporary files live in ``<root>/tmp/``. A chunk is written once whatever
arrays, commits or branches use it, and is verified on every read.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptObject, NotFound
from .atomic import fsync_dir
from .digest import blake3_hex, is_digest

__all__ = ["ChunkStore", "ChunkRef"]


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A stored chunk: its digest and size in bytes."""

    digest: str
    size: int


def _io_threads() -> int:
    return max(2, min(8, (os.cpu_count() or 2) * 2))


class ChunkStore:
    """Content-addressed files of encoded chunk bytes.

    Writes are durable per file (fsync before rename); the directory entries
    are made durable by :meth:`sync_dirs`, which a commit calls before it
    moves a ref.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"

    # -- paths -------------------------------------------------------------
    def path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise CorruptObject("malformed chunk digest", digest)
        return self.root / digest[:2] / digest[2:]

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    # -- writing -----------------------------------------------------------
    def put(self, data: bytes | bytearray | memoryview, digest: str | None = None) -> ChunkRef:
        """Store ``data`` (if not already there) and return its reference.

        An existing chunk has its mtime refreshed so that a concurrent ``gc``
        does not take it while a new commit comes to use it.
        """
        if digest is None:
            digest = blake3_hex(data)
        target = self.path(digest)
        try:
            os.utime(target, None)
            return ChunkRef(digest, len(data))
        except FileNotFoundError:
            pass
        target.parent.mkdir(exist_ok=True)
        tmp = self.tmp / f"{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            view = memoryview(data).cast("B")
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, target)
        return ChunkRef(digest, len(data))

    def put_many(self, items: Iterable[bytes | bytearray | memoryview], *, threads: int | None = None) -> list[ChunkRef]:
        """Hash and store many chunks in parallel; results keep the input order."""
        items = list(items)
        if len(items) <= 1:
            return [self.put(x) for x in items]
        with ThreadPoolExecutor(max_workers=threads or _io_threads()) as pool:
            return list(pool.map(self.put, items))

    def sync_dirs(self, digests: Iterable[str]) -> None:
        """fsync the fan-out directories holding ``digests`` (each once)."""
        for prefix in sorted({d[:2] for d in digests}):
            d = self.root / prefix
            if d.exists():
                fsync_dir(d)

    # -- reading -----------------------------------------------------------
    def get(self, digest: str) -> bytes:
        """Read a chunk and verify it against its digest."""
        try:
            with open(self.path(digest), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise NotFound("missing chunk", digest) from None
        if blake3_hex(data) != digest:
            raise CorruptObject("chunk content does not match its digest", digest)
        return data

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound("missing chunk", digest) from None

    def iter_digests(self) -> Iterator[str]:
        """Every digest present in the store (no verification)."""
        if not self.root.exists():
            return
        for sub in sorted(os.listdir(self.root)):
            if len(sub) != 2:
                continue
            for name in sorted(os.listdir(self.root / sub)):
                d = sub + name
                if is_digest(d):
                    yield d

    def delete(self, digest: str) -> int:
        """Remove a chunk; returns the bytes freed."""
        p = self.path(digest)
        try:
            n = p.stat().st_size
            p.unlink()
            return n
        except FileNotFoundError:
            return 0

    def stale_temp_files(self, older_than: float) -> list[Path]:
        """Temporary files left by killed writers, older than ``older_than`` seconds."""
        if not self.tmp.exists():
            return []
        now = time.time()
        out = []
        for name in os.listdir(self.tmp):
            p = self.tmp / name
            try:
                if now - p.stat().st_mtime >= older_than:
                    out.append(p)
            except FileNotFoundError:
                pass
        return out
