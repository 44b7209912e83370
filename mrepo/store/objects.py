"""Git objects (blobs, trees, commits, tags) read and written through dulwich.

dulwich serialises and parses the objects; this module writes loose objects
itself so that every write is durable (fsync before rename, named
``tmp_obj_*`` while in flight as git does, so ``git fsck`` ignores leftovers of
a killed writer) and verifies every object it reads against its SHA-1.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
import weakref
import zlib
from collections import OrderedDict
from pathlib import Path

from dulwich.errors import ObjectFormatException
from dulwich.objects import Blob, Commit, ShaFile, Tag, Tree
from dulwich.object_store import DiskObjectStore

from ..errors import CorruptObject, NotFound
from .atomic import fsync_dir, write_new_synced

__all__ = ["GitObjects"]


_TYPES = {b"blob": Blob, b"tree": Tree, b"commit": Commit, b"tag": Tag}


def _parse_loose(raw: bytes, sha: str) -> ShaFile:
    try:
        data = zlib.decompress(raw)
    except zlib.error as e:
        raise CorruptObject(f"damaged git object: {e}", sha) from None
    head, sep, body = data.partition(b"\0")
    parts = head.split(b" ")
    if not sep or len(parts) != 2 or parts[0] not in _TYPES or not parts[1].isdigit():
        raise CorruptObject("damaged git object header", sha)
    if int(parts[1]) != len(body):
        raise CorruptObject("git object length does not match its header", sha)
    if hashlib.sha1(data).hexdigest() != sha:
        raise CorruptObject("git object content does not match its id", sha)
    return _TYPES[parts[0]].from_raw_string(_TYPES[parts[0]].type_num, body, sha=sha.encode("ascii"))


class GitObjects:
    """Read/write access to the git object database of a repository."""

    def __init__(self, gitdir: str | os.PathLike[str], *, cache_size: int = 4096) -> None:
        self.gitdir = Path(gitdir)
        self.objects_dir = self.gitdir / "objects"
        self._store: DiskObjectStore | None = None
        self._cache: OrderedDict[str, ShaFile] = OrderedDict()
        self._cache_size = cache_size
        self._dirty_dirs: set[str] = set()
        self._lock = threading.Lock()
        self._pack_lock = threading.RLock()  # dulwich's pack store is not thread-safe
        self._closer: weakref.finalize | None = None

    @property
    def dulwich_store(self) -> DiskObjectStore:
        with self._pack_lock:
            if self._store is None:
                store = DiskObjectStore(str(self.objects_dir))
                # its pack files are closed when this object goes, or at exit
                # (before the interpreter tears its modules down), never later
                self._closer = weakref.finalize(self, store.close)
                self._store = store
            return self._store

    def close(self) -> None:
        """Release the pack files dulwich holds open (reopened on demand)."""
        with self._pack_lock:
            store, self._store = self._store, None
            closer = getattr(self, "_closer", None)
            self._closer = None
        if closer is not None:
            closer.detach()
        if store is not None:
            store.close()

    # -- writing -----------------------------------------------------------
    def write(self, obj: ShaFile) -> str:
        """Write ``obj`` as a loose object (if absent); return its hex id."""
        sha = obj.id.decode("ascii")
        d = self.objects_dir / sha[:2]
        target = d / sha[2:]
        try:
            os.utime(target, None)  # exists: freshen for gc grace periods
            return sha
        except FileNotFoundError:
            pass
        if self._packed(sha):
            return sha
        if not d.is_dir():
            # a new fan-out directory: its entry in objects/ must be durable too
            d.mkdir(exist_ok=True)
            fsync_dir(self.objects_dir)
        tmp = d / f"tmp_obj_{uuid.uuid4().hex}"
        data = b"".join(obj.as_legacy_object_chunks())
        write_new_synced(tmp, data)
        os.replace(tmp, target)
        with self._lock:
            self._dirty_dirs.add(sha[:2])
        return sha

    def write_blob(self, data: bytes) -> str:
        return self.write(Blob.from_string(data))

    def sync(self) -> None:
        """fsync the object directories written to since the last sync."""
        with self._lock:
            dirs, self._dirty_dirs = sorted(self._dirty_dirs), set()
        for prefix in dirs:
            fsync_dir(self.objects_dir / prefix)

    def _packed(self, sha: str) -> bool:
        pack_dir = self.objects_dir / "pack"
        if not pack_dir.exists() or not any(pack_dir.glob("*.idx")):
            return False
        try:
            with self._pack_lock:
                return self.dulwich_store.contains_packed(sha.encode("ascii"))
        except Exception:
            return False

    # -- reading -----------------------------------------------------------
    def exists(self, sha: str) -> bool:
        return (self.objects_dir / sha[:2] / sha[2:]).exists() or self._packed(sha)

    def read(self, sha: str) -> ShaFile:
        """Read and verify the object ``sha`` (hex).

        A loose object is inflated whole (so zlib's own checksum is checked
        too), its header checked against its length, and its SHA-1 recomputed.
        """
        with self._lock:
            cached = self._cache.get(sha)
            if cached is not None:
                self._cache.move_to_end(sha)
                return cached
        path = self.objects_dir / sha[:2] / sha[2:]
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = None
        try:
            if raw is not None:
                obj = _parse_loose(raw, sha)
            elif self._packed(sha):
                with self._pack_lock:
                    obj = self.dulwich_store[sha.encode("ascii")]
            else:
                raise NotFound("missing git object", sha)
            actual = obj.id.decode("ascii")
        except (NotFound, CorruptObject):
            raise
        except (zlib.error, ObjectFormatException, ValueError, IndexError, AssertionError, UnicodeDecodeError, KeyError) as e:
            raise CorruptObject(f"unreadable git object ({type(e).__name__})", sha) from None
        if actual != sha:
            raise CorruptObject("git object content does not match its id", sha)
        with self._lock:
            self._cache[sha] = obj
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return obj

    def _typed(self, sha: str, cls: type, what: str) -> ShaFile:
        obj = self.read(sha)
        if not isinstance(obj, cls):
            raise CorruptObject(f"expected a {what}, found a {obj.type_name.decode()}", sha)
        return obj

    def blob(self, sha: str) -> bytes:
        return self._typed(sha, Blob, "blob").as_raw_string()  # type: ignore[union-attr]

    def tree(self, sha: str) -> Tree:
        return self._typed(sha, Tree, "tree")  # type: ignore[return-value]

    def commit(self, sha: str) -> Commit:
        return self._typed(sha, Commit, "commit")  # type: ignore[return-value]

    def tag(self, sha: str) -> Tag:
        return self._typed(sha, Tag, "tag")  # type: ignore[return-value]

    def iter_loose(self):
        """(sha, path) of every loose object file."""
        if not self.objects_dir.exists():
            return
        for sub in sorted(os.listdir(self.objects_dir)):
            if len(sub) != 2:
                continue
            for name in sorted(os.listdir(self.objects_dir / sub)):
                if len(name) == 38:
                    yield sub + name, self.objects_dir / sub / name
