"""A read-only view of one committed tree: keys, entries, manifests."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import CorruptObject
from .chunks import ChunkRef
from .layout import DATA, MANIFEST, METADATA_NAMES, ancestors
from .manifest import decode_manifest
from .objects import GitObjects

__all__ = ["Entry", "Snapshot", "TreeDict"]

TreeDict = dict[str, tuple[int, str]]  # name -> (mode, sha)


@dataclass(frozen=True, slots=True)
class Entry:
    """What a key holds: a git blob (``kind='blob'``, ``id`` = SHA-1) or a
    chunk (``kind='chunk'``, ``id`` = BLAKE3 digest, ``size`` in bytes)."""

    kind: str
    id: str
    size: int | None = None

    @staticmethod
    def chunk(ref: ChunkRef) -> "Entry":
        return Entry("chunk", ref.digest, ref.size)

    def chunk_ref(self) -> ChunkRef:
        assert self.kind == "chunk" and self.size is not None
        return ChunkRef(self.id, self.size)


class Snapshot:
    """Keys and entries of the tree ``tree`` (None: an empty tree)."""

    def __init__(self, objects: GitObjects, tree: str | None, commit: str | None = None) -> None:
        self.objects = objects
        self.tree = tree
        self.commit = commit
        self._trees: dict[str, TreeDict | None] = {}
        self._manifests: dict[str, dict[str, ChunkRef]] = {}

    # -- trees -------------------------------------------------------------
    def _load_tree(self, sha: str) -> TreeDict:
        t = self.objects.tree(sha)
        out: TreeDict = {}
        for item in t.iteritems():
            out[item.path.decode("utf-8", "surrogateescape")] = (item.mode, item.sha.decode("ascii"))
        return out

    def dir(self, path: str) -> TreeDict | None:
        """The tree at folder ``path`` ('' for the root) as a dict, or None."""
        if path in self._trees:
            return self._trees[path]
        if path == "":
            result = self._load_tree(self.tree) if self.tree else {}
        else:
            parent, _, name = path.rpartition("/")
            pt = self.dir(parent)
            ent = pt.get(name) if pt else None
            result = self._load_tree(ent[1]) if ent and stat.S_ISDIR(ent[0]) else None
        self._trees[path] = result
        return result

    def tree_id(self, path: str) -> str | None:
        if path == "":
            return self.tree
        parent, _, name = path.rpartition("/")
        pt = self.dir(parent)
        ent = pt.get(name) if pt else None
        return ent[1] if ent and stat.S_ISDIR(ent[0]) else None

    def blob_id(self, path: str) -> str | None:
        parent, _, name = path.rpartition("/")
        pt = self.dir(parent)
        ent = pt.get(name) if pt else None
        return ent[1] if ent and not stat.S_ISDIR(ent[0]) else None

    def has_metadata(self, folder: str) -> bool:
        d = self.dir(folder)
        return bool(d) and any(n in METADATA_NAMES for n in d)

    # -- manifests ---------------------------------------------------------
    def owner(self, key: str) -> str:
        for a in ancestors(key):
            if a == DATA or self.has_metadata(a):
                return a
        return DATA

    def manifest(self, owner: str) -> dict[str, ChunkRef]:
        m = self._manifests.get(owner)
        if m is None:
            sha = self.blob_id(f"{owner}/{MANIFEST}")
            m = decode_manifest(self.objects.blob(sha), f"{owner}/{MANIFEST}") if sha else {}
            self._manifests[owner] = m
        return m

    # -- keys ----------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        from .layout import is_blob_key

        if is_blob_key(key):
            sha = self.blob_id(key)
            return Entry("blob", sha) if sha else None
        owner = self.owner(key)
        ref = self.manifest(owner).get(key[len(owner) + 1 :])
        return Entry.chunk(ref) if ref else None

    def iter_entries(self, prefix: str = "") -> Iterator[tuple[str, Entry]]:
        """Every (key, entry) whose key starts with ``prefix`` (a string prefix)."""
        # deepest existing folder that contains every key with this prefix
        start = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        while start and self.dir(start) is None:
            start = start.rsplit("/", 1)[0] if "/" in start else ""
        # manifests of owners above the start folder may hold keys below it
        if start.startswith(DATA + "/"):
            for a in ancestors(start + "/x"):
                if a == start:
                    continue
                for rel, ref in self.manifest(a).items():
                    k = f"{a}/{rel}"
                    if k.startswith(prefix):
                        yield k, Entry.chunk(ref)
        yield from self._walk(start, prefix)

    def _walk(self, folder: str, prefix: str) -> Iterator[tuple[str, Entry]]:
        d = self.dir(folder)
        if not d:
            return
        for name, (mode, sha) in sorted(d.items()):
            path = f"{folder}/{name}" if folder else name
            if stat.S_ISDIR(mode):
                if path.startswith(prefix) or prefix.startswith(path + "/"):
                    yield from self._walk(path, prefix)
            elif name == MANIFEST and (path.startswith(DATA + "/")):
                owner = folder
                for rel, ref in sorted(self.manifest(owner).items()):
                    k = f"{owner}/{rel}"
                    if k.startswith(prefix):
                        yield k, Entry.chunk(ref)
            elif path.startswith(prefix):
                yield path, Entry("blob", sha)

    def read_blob(self, key: str) -> bytes | None:
        sha = self.blob_id(key)
        return self.objects.blob(sha) if sha else None

