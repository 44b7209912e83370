"""Differences between snapshots: changed keys, and a per-node summary."""

from __future__ import annotations

import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .layout import DATA, DOCS, MANIFEST, META, METADATA_NAMES
from .snapshot import Entry, Snapshot

__all__ = ["changed_keys", "NodeChange", "summarize_changes"]


def _candidates(a: Snapshot, b: Snapshot, folder: str) -> Iterator[str]:
    if a.tree_id(folder) == b.tree_id(folder):
        return
    da = a.dir(folder) or {}
    db = b.dir(folder) or {}
    for name in sorted(set(da) | set(db)):
        ea, eb = da.get(name), db.get(name)
        if ea == eb:
            continue
        path = f"{folder}/{name}" if folder else name
        a_dir = ea is not None and stat.S_ISDIR(ea[0])
        b_dir = eb is not None and stat.S_ISDIR(eb[0])
        if a_dir or b_dir:
            yield from _candidates(a, b, path)
            if (ea is not None and not a_dir) or (eb is not None and not b_dir):
                yield path
        elif name == MANIFEST and path.startswith(DATA + "/"):
            ma, mb = a.manifest(folder), b.manifest(folder)
            for rel in set(ma) | set(mb):
                if ma.get(rel) != mb.get(rel):
                    yield f"{folder}/{rel}"
        else:
            yield path


def changed_keys(a: Snapshot, b: Snapshot) -> dict[str, tuple[Entry | None, Entry | None]]:
    """key -> (entry in a, entry in b) for every key whose entry differs.

    Unchanged subtrees (same tree id) are skipped without being read.
    """
    out: dict[str, tuple[Entry | None, Entry | None]] = {}
    for k in _candidates(a, b, ""):
        if k in out or k.startswith(META + "/"):
            continue
        if k.startswith(DATA + "/") and k.rsplit("/", 1)[-1] == MANIFEST:
            continue
        ea, eb = a.get(k), b.get(k)
        if ea != eb:
            out[k] = (ea, eb)
    return out


@dataclass
class NodeChange:
    """How one array, group or document differs between two states.

    ``chunks_changed`` counts chunks added, removed or replaced;
    ``bytes_changed`` is the stored size of the new versions of those chunks
    (what a transfer of the change costs).
    """

    name: str
    kind: str  # "array" | "group" | "document"
    status: str  # "added" | "deleted" | "modified"
    chunks_changed: int = 0
    chunks_total: int = 0
    bytes_changed: int = 0
    metadata_changed: bool = False


def summarize_changes(
    changes: Mapping[str, tuple[Entry | None, Entry | None]], a: Snapshot | object, b: Snapshot | object
) -> list[NodeChange]:
    """Group key changes into per-node changes. ``a``/``b`` must offer ``get``
    and ``owner``-like lookups (Snapshot, or Transaction via its view)."""
    from .arrays import node_kind

    nodes: dict[tuple[str, str], NodeChange] = {}
    for key, (ea, eb) in changes.items():
        if key.startswith(DOCS + "/"):
            name, kind = key[len(DOCS) + 1 :], "document"
        else:
            if key.rsplit("/", 1)[-1] in METADATA_NAMES:
                folder = key.rsplit("/", 1)[0]
            else:
                snap = b if eb is not None else a
                folder = _owner(snap, key)
            name = folder[len(DATA) + 1 :] if folder != DATA else ""
            kind = ""
        nc = nodes.get((kind, name))
        if nc is None:
            nc = NodeChange(name=name, kind=kind, status="modified")
            nodes[(kind, name)] = nc
        if key.rsplit("/", 1)[-1] in METADATA_NAMES or kind == "document":
            nc.metadata_changed = True
            if ea is None:
                nc.status = "added"
            elif eb is None:
                nc.status = "deleted"
            if kind == "document" and eb is not None:
                nc.bytes_changed += eb.size or 0
        else:
            nc.chunks_changed += 1
            if eb is not None:
                nc.bytes_changed += eb.size or 0
    out = []
    for (kind, name), nc in nodes.items():
        if kind == "":
            ka = node_kind(a, name)
            kb = node_kind(b, name)
            nc.kind = kb or ka or "group"
            if ka is None and kb is not None:
                nc.status = "added"
            elif kb is None and ka is not None:
                nc.status = "deleted"
            if nc.kind == "array" and kb is not None:
                try:
                    from .arrays import array_info

                    nc.chunks_total = array_info(b, name).n_chunks
                except Exception:
                    pass
        if nc.kind == "group" and nc.chunks_changed == 0:
            continue  # groups are implied by array names; their metadata is zarr's bookkeeping
        out.append(nc)
    return sorted(out, key=lambda n: (n.kind != "array", n.name))


def _owner(view: object, key: str) -> str:
    if isinstance(view, Snapshot):
        return view.owner(key)
    # a transaction: metadata presence from its own view
    from .layout import ancestors

    for a in ancestors(key):
        if a == DATA:
            return a
        for n in METADATA_NAMES:
            if view.get(f"{a}/{n}") is not None:  # type: ignore[attr-defined]
                return a
    return DATA
