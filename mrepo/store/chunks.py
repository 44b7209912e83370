"""The chunk store: encoded array chunks addressed by their BLAKE3 digest.

Layout (see docs/format.md): ``<root>/<d[0:2]>/<d[2:]>`` for a digest ``d``;
temporary files live in ``<root>/tmp/``. A chunk is written once whatever
arrays, commits or branches use it, and is verified on every read.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptObject, NotFound
from .atomic import fsync_dir
from .digest import blake3_hex, is_digest

__all__ = ["ChunkStore", "ChunkRef", "ChunkFetcher", "register_fetcher", "fetcher_factory"]

#: A chunk fetcher: given digests, returns the bytes of those it can get
#: (a subset). The store verifies every returned chunk against its digest.
#: It may also offer ``promised(digest) -> bool`` (is the chunk available
#: from it, without fetching it), used by ``fsck`` on lazy repositories.
ChunkFetcher = Callable[[Sequence[str]], Mapping[str, bytes]]

# name -> factory(repository) -> fetcher or None. Layers above the store
# register factories; a repository names one in its config (``mrepo.fetcher``).
_FETCHER_FACTORIES: dict[str, Callable[[object], "ChunkFetcher | None"]] = {}


def register_fetcher(name: str, factory: Callable[[object], "ChunkFetcher | None"]) -> None:
    """Register a factory of chunk fetchers under ``name`` (a module name by convention)."""
    _FETCHER_FACTORIES[name] = factory


def fetcher_factory(name: str) -> Callable[[object], "ChunkFetcher | None"]:
    """The factory registered as ``name``; if none is, the module ``name`` is
    imported (it registers itself) and looked up again."""
    if name not in _FETCHER_FACTORIES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
    try:
        return _FETCHER_FACTORIES[name]
    except KeyError:
        raise NotFound("no chunk fetcher registered under this name", name) from None


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
        self._fetcher: ChunkFetcher | None = None
        self._fetcher_loader: Callable[[], ChunkFetcher | None] | None = None
        self._fetcher_lock = threading.Lock()
        self.cache_fetched = True

    # -- fetching missing chunks (lazy repositories) ------------------------
    def set_fetcher(
        self, fetcher: ChunkFetcher | Callable[[], ChunkFetcher | None] | None, *, cache: bool = True, deferred: bool = False
    ) -> None:
        """Consult ``fetcher`` when a chunk is missing. Fetched chunks are
        verified against their digest and, with ``cache``, stored. With
        ``deferred``, ``fetcher`` is a zero-argument callable that builds the
        fetcher on the first miss."""
        with self._fetcher_lock:
            self._fetcher = None if deferred else fetcher  # type: ignore[assignment]
            self._fetcher_loader = fetcher if deferred else None  # type: ignore[assignment]
            self.cache_fetched = cache

    @property
    def fetcher(self) -> ChunkFetcher | None:
        with self._fetcher_lock:
            if self._fetcher is None and self._fetcher_loader is not None:
                # the loader is dropped only once resolved: concurrent readers
                # that miss meanwhile wait on the lock instead of failing
                self._fetcher = self._fetcher_loader()
                self._fetcher_loader = None
            return self._fetcher

    def _fetch_one(self, digest: str) -> bytes:
        fetcher = self.fetcher
        if fetcher is None:
            raise NotFound("missing chunk", digest)
        data = fetcher([digest]).get(digest)
        if data is None:
            raise NotFound("missing chunk (not available from the chunk fetcher)", digest)
        data = bytes(data)
        if blake3_hex(data) != digest:
            raise CorruptObject("fetched chunk does not match its digest", digest)
        if self.cache_fetched:
            self.put(data, digest)
        return data

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
        if not target.parent.is_dir():
            # a new fan-out directory: its entry in the root must be durable too
            target.parent.mkdir(exist_ok=True)
            fsync_dir(self.root)
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
    def get(self, digest: str, *, fetch: bool = True) -> bytes:
        """Read a chunk and verify it against its digest. A missing chunk is
        asked of the fetcher, if one is set and ``fetch`` is true."""
        try:
            with open(self.path(digest), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            if fetch and (self._fetcher is not None or self._fetcher_loader is not None):
                return self._fetch_one(digest)
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
