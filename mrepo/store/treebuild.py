"""Building a new commit tree from a base snapshot and a set of key changes.

Only the folders on changed paths are rewritten; every other subtree keeps its
id. Chunk keys are regrouped into the manifests of their owners (see
:mod:`mrepo.store.layout`): a change of a metadata document can move keys from
one owner to another, and those moves are computed here.
"""

from __future__ import annotations

import stat
from collections import defaultdict
from collections.abc import Mapping

from dulwich.objects import Tree

from ..errors import InvalidInput
from .chunks import ChunkRef
from .layout import DATA, MANIFEST, METADATA_NAMES, ancestors, is_blob_key
from .manifest import encode_manifest
from .objects import GitObjects
from .snapshot import Entry, Snapshot

__all__ = ["build_tree"]

_BLOB_MODE = 0o100644
_TREE_MODE = 0o040000


def build_tree(
    objects: GitObjects,
    base: Snapshot,
    changes: Mapping[str, Entry | None],
    blob_edits: Mapping[str, str | None] | None = None,
) -> str:
    """Return the id of the tree ``base`` + ``changes``.

    Parameters
    ----------
    changes:
        key -> new entry, or None to delete the key. Blob entries must already
        be written to ``objects``; chunk entries to the chunk store.
    blob_edits:
        extra path -> blob id (or None) edits, e.g. ``.mrepo/commit.json``.
    """
    edits: dict[str, str | None] = {}
    chunk_changes: dict[str, Entry | None] = {}
    meta_changed_folders: set[str] = set()
    for key, ent in changes.items():
        if is_blob_key(key):
            if ent is not None and ent.kind != "blob":
                raise InvalidInput("a metadata or document key must hold a blob", key)
            edits[key] = ent.id if ent is not None else None
            if key.startswith(DATA + "/") and key.rsplit("/", 1)[-1] in METADATA_NAMES:
                meta_changed_folders.add(key.rsplit("/", 1)[0])
        else:
            if ent is not None and ent.kind != "chunk":
                raise InvalidInput("a chunk key must hold a chunk", key)
            chunk_changes[key] = ent
    if blob_edits:
        edits.update(blob_edits)

    # --- metadata presence and owners in the new state -----------------------
    meta_cache: dict[str, bool] = {}

    def has_meta_new(folder: str) -> bool:
        r = meta_cache.get(folder)
        if r is None:
            d = base.dir(folder) or {}
            names = {n for n in d if n in METADATA_NAMES}
            for n in METADATA_NAMES:
                p = f"{folder}/{n}"
                if p in edits:
                    (names.add if edits[p] is not None else names.discard)(n)
            r = bool(names)
            meta_cache[folder] = r
        return r

    def owner_new(key: str) -> str:
        for a in ancestors(key):
            if a == DATA or has_meta_new(a):
                return a
        return DATA

    # --- keys whose manifest entry changes ---------------------------------
    moved: dict[str, Entry | None] = dict(chunk_changes)
    for folder in meta_changed_folders:
        for k, ent in base.iter_entries(folder + "/"):
            if ent.kind == "chunk" and k not in moved:
                moved[k] = ent  # same value, possibly a new owner
    manifests: dict[str, dict[str, ChunkRef]] = {}

    def manifest_of(owner: str) -> dict[str, ChunkRef]:
        m = manifests.get(owner)
        if m is None:
            m = dict(base.manifest(owner))
            manifests[owner] = m
        return m

    for k, ent in moved.items():
        old = base.get(k)
        if old is not None:
            o = base.owner(k)
            manifest_of(o).pop(k[len(o) + 1 :], None)
        if ent is not None:
            n = owner_new(k)
            manifest_of(n)[k[len(n) + 1 :]] = ent.chunk_ref()
    for owner, m in manifests.items():
        path = f"{owner}/{MANIFEST}"
        if m and (owner == DATA or has_meta_new(owner)):
            edits[path] = objects.write_blob(encode_manifest(m))
        else:
            edits[path] = None
    tree = _apply(objects, base.tree, edits, "")
    if tree is None:
        tree = objects.write(Tree())
    return tree


def _apply(objects: GitObjects, tree_id: str | None, edits: Mapping[str, str | None], where: str) -> str | None:
    entries: dict[str, tuple[int, str]] = {}
    if tree_id is not None:
        for item in objects.tree(tree_id).iteritems():
            entries[item.path.decode("utf-8", "surrogateescape")] = (item.mode, item.sha.decode("ascii"))
    groups: dict[str, dict[str, str | None]] = defaultdict(dict)
    for path, val in edits.items():
        head, sep, rest = path.partition("/")
        groups[head][rest if sep else ""] = val
    for name, sub in groups.items():
        full = f"{where}{name}"
        if "" in sub:
            val = sub.pop("")
            if sub:
                raise InvalidInput("a path is used both as a file and as a folder", full)
            cur = entries.get(name)
            if cur is not None and stat.S_ISDIR(cur[0]):
                if val is None:
                    continue  # deleting a blob that is not there
                raise InvalidInput("a path is used both as a file and as a folder", full)
            if val is None:
                entries.pop(name, None)
            else:
                entries[name] = (_BLOB_MODE, val)
        else:
            cur = entries.get(name)
            if cur is not None and not stat.S_ISDIR(cur[0]):
                if all(v is None for v in sub.values()):
                    continue
                raise InvalidInput("a path is used both as a file and as a folder", full)
            child = _apply(objects, cur[1] if cur else None, sub, full + "/")
            if child is None:
                entries.pop(name, None)
            else:
                entries[name] = (_TREE_MODE, child)
    if not entries:
        return None
    t = Tree()
    for name, (mode, sha) in entries.items():
        t.add(name.encode("utf-8", "surrogateescape"), mode, sha.encode("ascii"))
    if tree_id is not None and t.id.decode("ascii") == tree_id:
        return tree_id
    return objects.write(t)
