"""The chunk store: encoded array chunks addressed by their BLAKE3 digest.

Layout (see docs/format.md §4): a chunk is a **loose** file
``<root>/<d[0:2]>/<d[2:]>`` for a digest ``d``, or an entry of a **pack**
``<root>/packs/<id>.pack`` found through its index ``<root>/packs/<id>.idx``
(the pack format of docs/remotes.md §2, :mod:`mrepo.store.packs`); temporary
files live in ``<root>/tmp/``. Commits write loose chunks; transfers (clone,
fetch, push to a path repository) write packs, so that many small chunks
cost a few files, not one each. A chunk is verified on every read, loose or
packed. Packs are immutable: ``gc`` drops a pack only when none of its chunks
is reachable, and otherwise rewrites the reachable ones into a new pack
before it drops the old one (:meth:`ChunkStore.repack`).
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

import blake3

from ..errors import CorruptObject, NotFound
from .atomic import fsync_dir, write_new_synced
from .digest import blake3_hex, is_digest
from .packs import PACK_HEADER, PackIndex, build_pack, coalesce, make_index, parse_index

__all__ = ["ChunkStore", "ChunkRef", "ChunkFetcher", "PackWriter", "register_fetcher", "fetcher_factory", "DEFAULT_PACK_BYTES"]

#: Target size of the packs a store writes (a transfer may pass its own).
DEFAULT_PACK_BYTES = 32 << 20

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


def _run_all(fn: Callable, tasks: Sequence, threads: int) -> list:
    """``[fn(t) for t in tasks]`` on a thread pool; the first failure cancels
    the tasks not yet started and is raised."""
    if len(tasks) <= 1 or threads <= 1:
        return [fn(t) for t in tasks]
    with ThreadPoolExecutor(max_workers=min(threads, len(tasks))) as pool:
        futures = [pool.submit(fn, t) for t in tasks]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _batches(items: list, threads: int) -> list[list]:
    """Split ``items`` into batches for ``threads`` workers (one task per
    batch, not per item: a future costs more than a small file operation)."""
    if len(items) < 64 or threads <= 1:
        return [items] if items else []
    n = max(1, min(len(items) // 16, threads * 8))
    size = -(-len(items) // n)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])


class ChunkStore:
    """Content-addressed encoded chunk bytes: loose files and packs.

    Loose writes are durable per file (fsync before rename); the directory
    entries are made durable by :meth:`sync_dirs`, which a commit calls
    before it moves a ref. Packs are written whole (pack, then its index,
    each fsynced and renamed into place): the index is the commit point.

    ``strict_packs``: a damaged pack index raises :class:`CorruptObject`
    (for a store read as a remote, which is never trusted) instead of being
    skipped and reported by :meth:`pack_problems` (a repository's own store,
    whose ``fsck`` reports it).
    """

    def __init__(self, root: str | os.PathLike[str], *, strict_packs: bool = False) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.packs_dir = self.root / "packs"
        self.strict_packs = strict_packs
        self._fetcher: ChunkFetcher | None = None
        self._fetcher_loader: Callable[[], ChunkFetcher | None] | None = None
        self._fetcher_lock = threading.Lock()
        self.cache_fetched = True
        # packs: id -> index, digest -> (pack id, offset, size), damaged indexes
        self._pack_lock = threading.RLock()
        self._packs: dict[str, PackIndex] = {}
        self._where: dict[str, tuple[str, int, int]] = {}
        self._bad: dict[str, tuple[int, str]] = {}  # index file name -> (mtime_ns, message)
        self._scan_sig: int | None = None

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

    def pack_path(self, pack_id: str) -> Path:
        return self.packs_dir / f"{pack_id}.pack"

    def has(self, digest: str) -> bool:
        """Is the chunk here (loose or in a pack)? Not verified."""
        return self.path(digest).exists() or self._locate(digest) is not None

    def missing(self, digests: Iterable[str], *, threads: int | None = None) -> list[str]:
        """Those of ``digests`` that are neither in a pack nor loose here
        (in the given order, without repeats)."""
        want = [d for d in dict.fromkeys(digests)]
        for d in want:
            if not is_digest(d):
                raise CorruptObject("malformed chunk digest", d)
        if not want:
            return []
        self._scan(force=True)
        where = self._where
        rest = [d for d in want if d not in where]
        if not rest:
            return []
        try:
            if not any(len(n) == 2 for n in os.listdir(self.root)):
                return rest  # no loose chunk at all (a new clone)
        except FileNotFoundError:
            return rest
        root = str(self.root)
        exists = os.path.exists
        threads = threads or _io_threads()
        flags = [f for part in _run_all(lambda b: [exists(f"{root}/{d[:2]}/{d[2:]}") for d in b], _batches(rest, threads), threads)
                 for f in part]
        return [d for d, f in zip(rest, flags) if not f]

    # -- packs ---------------------------------------------------------------
    def _scan(self, force: bool = False) -> None:
        """Load the indexes of packs that appeared, forget those that went.
        Without ``force`` nothing is read unless the packs directory changed."""
        try:
            sig = os.stat(self.packs_dir).st_mtime_ns
        except FileNotFoundError:
            sig = None
        if sig == self._scan_sig and not force:
            return
        with self._pack_lock:
            try:
                names = os.listdir(self.packs_dir) if sig is not None else []
            except FileNotFoundError:
                names = []
            ids = {n[:-4] for n in names if n.endswith(".idx") and is_digest(n[:-4])}
            gone = [p for p in self._packs if p not in ids]
            for n in list(self._bad):
                if n[:-4] not in ids:
                    del self._bad[n]
            for pid in sorted(ids - self._packs.keys()):
                name = f"{pid}.idx"
                path = self.packs_dir / name
                try:
                    mtime = os.stat(path).st_mtime_ns
                    if not self.strict_packs and self._bad.get(name, (None,))[0] == mtime:
                        continue  # known damaged, unchanged
                    idx = parse_index(path.read_bytes(), str(path))
                except FileNotFoundError:
                    continue
                except CorruptObject as e:
                    if self.strict_packs:
                        raise
                    self._bad[name] = (mtime, e.message)
                    continue
                self._bad.pop(name, None)
                self._register(idx)
            if gone:
                for pid in gone:
                    del self._packs[pid]
                self._rebuild()
            self._scan_sig = sig

    def _register(self, idx: PackIndex) -> None:
        with self._pack_lock:
            if idx.pack_id in self._packs:
                return
            self._packs[idx.pack_id] = idx
            where = self._where
            pid = idx.pack_id
            for d, o, n in zip(idx.digests_hex(), idx.entries["offset"].tolist(), idx.entries["size"].tolist()):
                if d not in where:
                    where[d] = (pid, o, n)

    def _rebuild(self) -> None:
        with self._pack_lock:
            where: dict[str, tuple[str, int, int]] = {}
            for pid, idx in self._packs.items():
                for d, o, n in zip(idx.digests_hex(), idx.entries["offset"].tolist(), idx.entries["size"].tolist()):
                    where.setdefault(d, (pid, o, n))
            self._where = where

    def _locate(self, digest: str, *, force: bool = False) -> tuple[str, int, int] | None:
        loc = self._where.get(digest)
        if loc is None:
            self._scan(force=force)
            loc = self._where.get(digest)
        return loc

    def _read_packed(self, digest: str, loc: tuple[str, int, int]) -> bytes:
        """Read and verify one packed chunk; FileNotFoundError if the pack went."""
        pid, off, size = loc
        path = self.pack_path(pid)
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, size, off)
        finally:
            os.close(fd)
        if len(data) != size:
            raise CorruptObject(f"truncated pack: got {len(data)} of {size} bytes at offset {off}", str(path))
        if blake3_hex(data) != digest:
            raise CorruptObject(f"chunk content does not match its digest (in pack {pid[:12]})", digest)
        return data

    def _get_packed(self, digest: str) -> bytes | None:
        loc = self._locate(digest, force=True)
        if loc is None:
            return None
        try:
            return self._read_packed(digest, loc)
        except FileNotFoundError:
            # repacked by a concurrent gc since the index was read: look again
            self._scan(force=True)
            loc = self._where.get(digest)
            if loc is None:
                return None
            try:
                return self._read_packed(digest, loc)
            except FileNotFoundError:
                return None

    def packs(self) -> dict[str, PackIndex]:
        """The packs of the store with a valid index (id -> index), freshly listed."""
        self._scan(force=True)
        with self._pack_lock:
            return dict(self._packs)

    def pack_problems(self) -> list[tuple[str, str, str]]:
        """(kind, object, message) for damaged indexes and missing or short
        packs (``fsck`` reports them)."""
        self._scan(force=True)
        out = [("corrupt", str(self.packs_dir / n), msg) for n, (_, msg) in sorted(self._bad.items())]
        for pid, idx in sorted(self.packs().items()):
            try:
                size = os.stat(self.pack_path(pid)).st_size
            except FileNotFoundError:
                out.append(("missing", str(self.pack_path(pid)), f"pack of an index is missing ({len(idx)} chunks)"))
                continue
            if size != idx.pack_size:
                out.append(("corrupt", str(self.pack_path(pid)), f"pack has {size} bytes, its index says {idx.pack_size}"))
        return out

    def write_pack(self, chunks: Sequence[tuple[str, bytes | bytearray | memoryview]]) -> PackIndex:
        """Write ``(digest, bytes)`` pairs (verified by the caller) as one pack."""
        pack_id, pack, idx = build_pack([(d, bytes(b)) for d, b in chunks])
        self.tmp.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"{uuid.uuid4().hex}.pack"
        write_new_synced(tmp, pack)
        self._install_pack(tmp, idx)
        return idx

    def _install_pack(self, tmp: Path, idx: PackIndex) -> None:
        """Move a written and fsynced pack into place, then commit it with its index."""
        pack_id = idx.pack_id
        if not self.packs_dir.is_dir():
            self.packs_dir.mkdir(exist_ok=True)
            fsync_dir(self.root)
        target = self.pack_path(pack_id)
        idx_path = self.packs_dir / f"{pack_id}.idx"
        if target.exists() and idx_path.exists():
            # the same bytes are already committed (the name is their digest): packs are
            # immutable; refresh its mtime, as put() does, so that gc keeps it a while
            tmp.unlink(missing_ok=True)
            try:
                os.utime(target, None)
            except OSError:
                pass
            self._register(idx)
            return
        os.replace(tmp, target)  # at most over an identical pack that lacks its index
        fsync_dir(self.packs_dir)  # the pack is durable under its name before its index exists
        tmp_idx = self.tmp / f"{uuid.uuid4().hex}.idx"
        write_new_synced(tmp_idx, idx.to_bytes())
        os.replace(tmp_idx, idx_path)
        fsync_dir(self.packs_dir)
        self._register(idx)

    def drop_pack(self, pack_id: str) -> int:
        """Remove a pack (its index first: a pack without one is ignored);
        returns the bytes freed. The caller (``gc``) has checked that every
        reachable chunk of it is stored elsewhere."""
        freed = 0
        for p in (self.packs_dir / f"{pack_id}.idx", self.pack_path(pack_id)):
            try:
                freed += p.stat().st_size
                p.unlink()
            except FileNotFoundError:
                pass
        fsync_dir(self.packs_dir)
        with self._pack_lock:
            if self._packs.pop(pack_id, None) is not None:
                self._rebuild()
        return freed

    def repack(self, pack_id: str, keep: Iterable[str]) -> PackIndex | None:
        """Rewrite the chunks ``keep`` of pack ``pack_id`` (each read and
        verified) into a new pack, then drop the old one. Returns the new
        index (None when nothing is kept)."""
        idx = self.packs().get(pack_id)
        if idx is None:
            raise NotFound("no such pack", str(self.pack_path(pack_id)))
        entries = {d: (pack_id, o, n) for d, o, n in zip(idx.digests_hex(), idx.entries["offset"].tolist(), idx.entries["size"].tolist())}
        keep = [d for d in dict.fromkeys(keep) if d in entries]
        keep.sort(key=lambda d: entries[d][1])  # keep the pack order (chunks of an array together)
        new = self.write_pack([(d, self._read_packed(d, entries[d])) for d in keep]) if keep else None
        if new is None or new.pack_id != pack_id:
            self.drop_pack(pack_id)
        return new

    def pack_writer(self, target_bytes: int = DEFAULT_PACK_BYTES) -> "PackWriter":
        """A thread-safe writer of received (verified) chunks into new packs."""
        return PackWriter(self, target_bytes)

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
        loc = self._locate(digest)
        if loc is not None:
            try:
                os.utime(self.pack_path(loc[0]), None)  # protects the whole pack from gc
                return ChunkRef(digest, len(data))
            except OSError:
                pass  # gone or not ours to touch: store it loose
        if not target.parent.is_dir():
            # a new fan-out directory: its entry in the root must be durable too
            target.parent.mkdir(exist_ok=True)
            fsync_dir(self.root)
        tmp = self.tmp / f"{uuid.uuid4().hex}"
        write_new_synced(tmp, data)
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
            packed = self._get_packed(digest)
            if packed is not None:
                return packed
            if fetch and (self._fetcher is not None or self._fetcher_loader is not None):
                return self._fetch_one(digest)
            raise NotFound("missing chunk", digest) from None
        if blake3_hex(data) != digest:
            raise CorruptObject("chunk content does not match its digest", digest)
        return data

    def read_many(
        self,
        digests: Iterable[str],
        sink: Callable[[str, bytes], None],
        *,
        fetch: bool = True,
        threads: int | None = None,
    ) -> tuple[int, int, int]:
        """Read ``digests`` in bulk, verify each and hand it to ``sink(digest,
        bytes)`` (from several threads). Packed chunks are read with few large
        reads (neighbours in a pack coalesced, gaps up to 1 MiB, up to 16 MiB
        per read), loose ones in parallel. A missing chunk is asked of the
        fetcher when ``fetch`` (else :class:`NotFound`); a short read of a pack
        or a chunk that does not match its digest raises :class:`CorruptObject`.
        Returns (reads, bytes read, packs read)."""
        want = list(dict.fromkeys(digests))
        for d in want:
            if not is_digest(d):
                raise CorruptObject("malformed chunk digest", d)
        if not want:
            return 0, 0, 0
        self._scan(force=True)
        where = self._where
        by_pack: dict[str, list[tuple[int, int, str]]] = {}
        loose: list[str] = []
        for d in want:
            loc = where.get(d)
            if loc is None:
                loose.append(d)
            else:
                by_pack.setdefault(loc[0], []).append((loc[1], loc[2], d))
        threads = threads or _io_threads()
        lock = threading.Lock()
        counts = [0, 0]

        def count(reads: int, nbytes: int) -> None:
            with lock:
                counts[0] += reads
                counts[1] += nbytes

        def read_pack(task: tuple[str, list]) -> None:
            pid, runs = task
            path = self.pack_path(pid)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # repacked meanwhile: one by one, through the fresh indexes
                for _s, _e, members in runs:
                    for _o, _n, d in members:
                        sink(d, self.get(d, fetch=fetch))
                return
            try:
                for start, end, members in runs:
                    buf = os.pread(fd, end - start, start)
                    count(1, len(buf))
                    if len(buf) != end - start:
                        raise CorruptObject(f"truncated pack: got {len(buf)} of {end - start} bytes at offset {start}", str(path))
                    view = memoryview(buf)
                    for off, size, d in members:
                        data = bytes(view[off - start : off - start + size])
                        if blake3_hex(data) != d:
                            raise CorruptObject(f"chunk content does not match its digest (in pack {path})", d)
                        sink(d, data)
            finally:
                os.close(fd)

        def read_loose(batch: list[str]) -> None:
            root = str(self.root)
            for d in batch:
                try:
                    with open(f"{root}/{d[:2]}/{d[2:]}", "rb") as f:
                        data = f.read()
                except FileNotFoundError:
                    data = self._get_packed(d)
                    if data is None:
                        if not fetch or (self._fetcher is None and self._fetcher_loader is None):
                            raise NotFound("missing chunk", d) from None
                        data = self._fetch_one(d)
                    sink(d, data)
                    continue
                count(1, len(data))
                if blake3_hex(data) != d:
                    raise CorruptObject(f"chunk content does not match its digest ({self.root})", d)
                sink(d, data)

        tasks: list[tuple[Callable, object]] = []
        for pid, items in by_pack.items():
            tasks.extend((read_pack, (pid, batch)) for batch in coalesce(items))
        tasks.extend((read_loose, b) for b in _batches(loose, threads))
        _run_all(lambda t: t[0](t[1]), tasks, threads)
        return counts[0], counts[1], len(by_pack)

    def get_many(self, digests: Iterable[str], *, fetch: bool = True, threads: int | None = None) -> dict[str, bytes]:
        """``{digest: bytes}`` of ``digests``, read in bulk and verified (:meth:`read_many`)."""
        out: dict[str, bytes] = {}
        lock = threading.Lock()

        def sink(d: str, data: bytes) -> None:
            with lock:
                out[d] = data

        self.read_many(digests, sink, fetch=fetch, threads=threads)
        return out

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            loc = self._locate(digest, force=True)
            if loc is None:
                raise NotFound("missing chunk", digest) from None
            return loc[2]

    def iter_loose_digests(self) -> Iterator[str]:
        """Every digest stored as a loose file (no verification)."""
        if not self.root.exists():
            return
        for sub in sorted(os.listdir(self.root)):
            if len(sub) != 2:
                continue
            for name in sorted(os.listdir(self.root / sub)):
                d = sub + name
                if is_digest(d):
                    yield d

    def iter_digests(self) -> Iterator[str]:
        """Every digest present in the store, loose or packed, once (no verification)."""
        seen = set()
        for d in self.iter_loose_digests():
            seen.add(d)
            yield d
        self._scan(force=True)
        for d in sorted(self._where):
            if d not in seen:
                yield d

    def delete(self, digest: str) -> int:
        """Remove a loose chunk; returns the bytes freed. Packed chunks go
        with their pack (:meth:`drop_pack`, :meth:`repack`: ``gc``)."""
        p = self.path(digest)
        try:
            n = p.stat().st_size
            p.unlink()
            return n
        except FileNotFoundError:
            return 0

    def stale_temp_files(self, older_than: float) -> list[Path]:
        """Temporary files left by killed writers, and packs left without an
        index (a writer killed between the two), older than ``older_than`` seconds."""
        now = time.time()
        cands: list[Path] = []
        if self.tmp.exists():
            cands += [self.tmp / n for n in os.listdir(self.tmp)]
        if self.packs_dir.exists():
            names = set(os.listdir(self.packs_dir))
            cands += [self.packs_dir / n for n in names
                      if n.endswith(".pack") and is_digest(n[:-5]) and f"{n[:-5]}.idx" not in names]
        out = []
        for p in cands:
            try:
                if now - p.stat().st_mtime >= older_than:
                    out.append(p)
            except FileNotFoundError:
                pass
        return out


class PackWriter:
    """Writes chunks that arrive (already verified by the caller, from any
    thread) into new packs of about ``target_bytes``: each pack is streamed
    to ``tmp/``, fsynced, moved into ``packs/`` and committed by its index.
    Use as a context manager; on an error the chunks already received are
    still committed (they are verified, and a re-run then skips them)."""

    def __init__(self, store: ChunkStore, target_bytes: int = DEFAULT_PACK_BYTES) -> None:
        self.store = store
        self.target = max(1, int(target_bytes))
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._tmp: Path | None = None
        self._hasher = None
        self._placed: dict[str, tuple[int, int]] = {}
        self._buf = bytearray()
        self._offset = 0
        self._seen: set[str] = set()
        self.packs: list[PackIndex] = []

    _BUFFER = 4 << 20  # small chunks are gathered into large writes

    def _open(self) -> None:
        self.store.tmp.mkdir(parents=True, exist_ok=True)
        self._tmp = self.store.tmp / f"{uuid.uuid4().hex}.pack"
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        self._hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self._buf = bytearray()
        self._offset = 0
        self._placed = {}
        self._write(PACK_HEADER)

    def _write(self, data: bytes | memoryview) -> None:
        self._buf += data
        self._offset += len(data)
        if len(self._buf) >= self._BUFFER:
            self._drain()

    def _drain(self) -> None:
        if self._buf:
            _write_all(self._fd, self._buf)  # type: ignore[arg-type]
            self._hasher.update(self._buf)  # type: ignore[union-attr]
            self._buf = bytearray()

    def add(self, digest: str, data: bytes | bytearray | memoryview) -> None:
        if not is_digest(digest):
            raise CorruptObject("malformed chunk digest", digest)
        view = memoryview(data).cast("B")
        with self._lock:
            if digest in self._seen:
                return
            if self._fd is None:
                self._open()
            start = self._offset
            self._write(view)
            self._placed[digest] = (start, len(view))
            self._seen.add(digest)
            if self._offset >= self.target:
                self._finish()

    def _finish(self) -> None:
        fd, tmp = self._fd, self._tmp
        if fd is None or tmp is None:
            return
        try:
            if self._placed:
                self._drain()
                os.fsync(fd)
        finally:
            self._fd = self._tmp = None
            self._buf = bytearray()
            os.close(fd)
        if not self._placed:
            tmp.unlink(missing_ok=True)
            return
        idx = make_index(self._hasher.hexdigest(), self._offset, self._placed)  # type: ignore[union-attr]
        self._placed = {}
        self.store._install_pack(tmp, idx)
        self.packs.append(idx)

    def flush(self) -> None:
        """Commit the pack being written (if any)."""
        with self._lock:
            self._finish()

    def discard(self) -> None:
        """Drop the pack being written (its temporary file)."""
        with self._lock:
            fd, tmp = self._fd, self._tmp
            self._fd = self._tmp = None
            self._placed = {}
            self._buf = bytearray()
            if fd is not None:
                os.close(fd)
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def __enter__(self) -> "PackWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.flush()
            return
        try:  # what arrived is verified: keep it, a re-run skips it
            self.flush()
        except OSError:
            self.discard()
