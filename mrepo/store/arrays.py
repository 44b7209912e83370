"""Arrays, groups and documents on top of transactions and snapshots.

``write_array`` creates the zarr v3 metadata through zarr itself and, for the
plain ``bytes`` codec chain, encodes and stores the chunks directly (slice,
little-endian copy, BLAKE3, write; in parallel threads), which is what zarr
would write, several times faster. Other codec chains (compressors) go
through zarr's own write path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import CorruptObject, InvalidInput, NotFound
from .chunks import ChunkRef
from .digest import json_digest
from .layout import DATA, DOCS, data_key, doc_key, validate_name
from .snapshot import Entry

__all__ = [
    "ArrayInfo",
    "NodeInfo",
    "default_chunks",
    "write_array",
    "open_array",
    "array_info",
    "list_nodes",
    "node_kind",
    "check_free",
    "write_document",
    "read_document",
    "delete_node",
    "DEFAULT_CHUNK_BYTES",
    "open_view_array",
]

DEFAULT_CHUNK_BYTES = 4 << 20


class View(Protocol):  # Snapshot or Transaction
    def get(self, key: str) -> Entry | None: ...
    def iter_entries(self, prefix: str = "") -> Iterator[tuple[str, Entry]]: ...


@dataclass(frozen=True)
class ArrayInfo:
    """What ``mrepo show`` prints for an array.

    ``digest`` is BLAKE3 of the canonical JSON ``{"metadata": <zarr.json>,
    "chunks": {<chunk key>: <chunk digest>}}``: it changes exactly when the
    array's metadata or any chunk changes.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    codecs: tuple[str, ...]
    n_chunks: int
    stored_bytes: int
    digest: str
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize if self.shape else np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class NodeInfo:
    name: str
    kind: str  # "array" | "group" | "document"


def default_chunks(shape: tuple[int, ...], itemsize: int, target_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[int, ...]:
    """Chunk shape of about ``target_bytes``: whole trailing axes where they
    fit, split from the slowest axis (a stack of frames becomes a few whole
    frames per chunk; a big frame becomes blocks of rows, then tiles)."""
    if not shape:
        return ()
    chunks = list(shape)
    budget = max(1, target_bytes // max(1, itemsize))
    for ax in range(len(shape)):
        rest = int(np.prod(chunks[ax + 1 :], dtype=np.int64)) if ax + 1 < len(shape) else 1
        if rest * chunks[ax] <= budget:
            break
        if rest <= budget:
            chunks[ax] = max(1, budget // rest)
            break
        chunks[ax] = 1
    return tuple(max(1, min(c, s)) if s > 0 else 1 for c, s in zip(chunks, shape))


def _zarr_meta(view: View, name: str) -> dict[str, Any] | None:
    ent = view.get(f"{data_key(name)}/zarr.json")
    if ent is None:
        return None
    raw = _read(view, ent, f"{data_key(name)}/zarr.json")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CorruptObject("zarr metadata is not valid JSON", f"{name}/zarr.json") from None


def _read(view: View, ent: Entry, key: str) -> bytes:
    repo = view.repo if hasattr(view, "repo") else None
    if repo is not None:
        return repo.read_entry(ent, key)
    return view.objects.blob(ent.id)  # type: ignore[attr-defined]


def node_kind(view: View, name: str) -> str | None:
    """'array', 'group', 'document' or None."""
    if name:
        if view.get(doc_key(name)) is not None:
            return "document"
    meta = _zarr_meta(view, name)
    if meta is not None:
        return "array" if meta.get("node_type") == "array" else "group"
    # implicit group: keys below it, unless they are chunk keys of an array
    for _ in view.iter_entries(data_key(name) + "/"):
        return None if _enclosing_array(view, name) else "group"
    return None


def _enclosing_array(view: View, name: str) -> str | None:
    """The array that ``name`` lies inside (a proper prefix of it), or None."""
    parts = name.split("/")
    for i in range(1, len(parts)):
        outer = "/".join(parts[:i])
        meta = _zarr_meta(view, outer)
        if meta is not None and meta.get("node_type") == "array":
            return outer
    return None


def array_info(view: View, name: str) -> ArrayInfo:
    meta = _zarr_meta(view, name)
    if meta is None or meta.get("node_type") != "array":
        raise NotFound("no such array", name)
    prefix = data_key(name) + "/"
    chunks: dict[str, str] = {}
    stored = 0
    for k, ent in view.iter_entries(prefix):
        if ent.kind != "chunk":
            continue
        chunks[k[len(prefix) :]] = ent.id
        stored += ent.size or 0
    grid = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [])
    codecs = tuple(c.get("name", "?") for c in meta.get("codecs", []))
    dt = meta.get("data_type")
    try:
        dtype = str(np.dtype(dt)) if isinstance(dt, str) else str(dt)
    except TypeError:
        dtype = str(dt)
    return ArrayInfo(
        name=name,
        shape=tuple(meta.get("shape", [])),
        dtype=dtype,
        chunks=tuple(grid),
        codecs=codecs,
        n_chunks=len(chunks),
        stored_bytes=stored,
        digest=json_digest({"metadata": meta, "chunks": chunks}),
        attributes=meta.get("attributes", {}) or {},
    )


def list_nodes(view: View) -> list[NodeInfo]:
    """Every array and document (groups are implied by names)."""
    out: list[NodeInfo] = []
    for k, ent in view.iter_entries(""):
        if k.startswith(DOCS + "/"):
            out.append(NodeInfo(k[len(DOCS) + 1 :], "document"))
        elif k.startswith(DATA + "/") and k.endswith("/zarr.json"):
            name = k[len(DATA) + 1 : -len("/zarr.json")]
            try:
                meta = json.loads(_read(view, ent, k))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(meta, dict) and meta.get("node_type") == "array":
                out.append(NodeInfo(name, "array"))
    return sorted(out, key=lambda n: n.name)


def check_free(view: View, name: str, kind: str) -> None:
    """Can ``name`` be staged as a ``kind`` ('array' or 'document') in ``view``?

    An array may replace an array, a document a document; an array cannot
    lie inside another array (zarr arrays hold chunks, not nodes).
    """
    other = node_kind(view, name)
    if other is not None and other != kind:
        article = "an" if other[0] in "aeiou" else "a"
        raise InvalidInput(f"'{name}' is already {article} {other}", name)
    if kind == "array":
        outer = _enclosing_array(view, name)
        if outer is not None:
            raise InvalidInput(f"'{outer}' is an array and cannot hold other arrays", name)


def write_array(
    txn: Any,
    name: str,
    data: Any,
    *,
    chunks: tuple[int, ...] | None = None,
    attributes: dict[str, Any] | None = None,
    compressors: Any = None,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
) -> ArrayInfo:
    """Stage ``data`` (numpy array or anything sliceable with shape/dtype) as
    array ``name`` in transaction ``txn``, replacing what was there.

    Parameters
    ----------
    chunks:
        Chunk shape; default :func:`default_chunks` (about 4 MiB).
    attributes:
        JSON-serialisable attributes stored in ``zarr.json``.
    compressors:
        zarr v3 compressors (default none: cryo-EM data barely compress and
        hashing then writes at disk speed).
    progress:
        Called with the number of bytes done after each chunk.
    """
    import zarr

    validate_name(name, "array name")
    check_free(txn, name, "array")
    shape = tuple(int(s) for s in data.shape)
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biufc":
        raise InvalidInput(f"unsupported array dtype {dtype}", name)
    le_dtype = dtype.newbyteorder("<")
    chunks = tuple(chunks) if chunks is not None else default_chunks(shape, dtype.itemsize)
    if len(chunks) != len(shape) or any(c <= 0 for c in chunks):
        raise InvalidInput(f"chunk shape {chunks} does not fit array shape {shape}", name)
    store = txn.store
    arr = zarr.create_array(
        store=store,
        name=name,
        shape=shape,
        dtype=dtype.newbyteorder("="),
        chunks=chunks,
        compressors=compressors,
        filters=None,
        fill_value=0,
        attributes=attributes or {},
        overwrite=True,
    )
    codecs = [c.to_dict()["name"] for c in arr.metadata.codecs]  # type: ignore[union-attr]
    if codecs != ["bytes"]:
        step = max(1, chunks[0]) if shape else 1
        if not shape:
            arr[...] = np.asarray(data)
        else:
            for z in range(0, shape[0], step):
                block = np.asarray(data[z : z + step])
                arr[z : z + step] = block
                if progress:
                    progress(block.nbytes)
        return array_info(txn, name)

    grid = tuple(math.ceil(s / c) for s, c in zip(shape, chunks)) if shape else ()
    encode_key = arr.metadata.encode_chunk_key  # type: ignore[union-attr]
    prefix = data_key(name) + "/"
    chunk_store = txn.repo.chunks

    def encode(idx: tuple[int, ...]) -> tuple[str, ChunkRef]:
        sl = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))
        block = np.asarray(data[sl])
        if block.shape != chunks:
            full = np.zeros(chunks, dtype=le_dtype)
            full[tuple(slice(0, n) for n in block.shape)] = block
            block = full
        else:
            block = np.ascontiguousarray(block, dtype=le_dtype)
        ref = chunk_store.put(memoryview(block).cast("B"))
        if progress:
            progress(int(np.prod([s.stop - s.start for s in sl])) * dtype.itemsize)
        return prefix + encode_key(idx), ref

    indices = list(np.ndindex(*grid)) if shape else [()]
    from .chunks import _io_threads

    entries: dict[str, Entry | None] = {}
    with ThreadPoolExecutor(max_workers=threads or _io_threads()) as pool:
        for key, ref in pool.map(encode, indices):
            entries[key] = Entry.chunk(ref)
    txn.set_entries(entries)
    return array_info(txn, name)


def open_array(repo: Any, commit: str, name: str) -> Any:
    """Read-only ``zarr.Array`` of ``name`` at ``commit``."""
    import zarr

    from .zarr_store import MrepoStore

    validate_name(name, "array name")
    snap = repo.snapshot_of(commit)
    meta = _zarr_meta(snap, name)
    if meta is None or meta.get("node_type") != "array":
        raise NotFound("no such array", f"{commit[:12]}:{name}")
    return zarr.open_array(store=MrepoStore(str(repo.path), commit=commit), path=name, mode="r")


def write_document(txn: Any, name: str, data: bytes | str) -> Entry:
    """Stage a small document (JSON, TOML, text) under ``docs/<name>``."""
    validate_name(name, "document name")
    check_free(txn, name, "document")
    if isinstance(data, str):
        data = data.encode("utf-8")
    return txn.set(doc_key(name), data)


def read_document(view: View, name: str) -> bytes:
    validate_name(name, "document name")
    ent = view.get(doc_key(name))
    if ent is None:
        raise NotFound("no such document", name)
    return _read(view, ent, doc_key(name))


def delete_node(txn: Any, name: str) -> int:
    """Stage the removal of array/group ``name`` or document ``name``; returns keys removed."""
    validate_name(name, "name")
    kind = node_kind(txn, name)
    if kind is None:
        raise NotFound("no such array or document", name)
    if kind == "document":
        txn.delete(doc_key(name))
        return 1
    return txn.delete_prefix(data_key(name) + "/")


def open_view_array(view: Any, name: str) -> Any:
    """A ``zarr.Array`` of ``name`` in a Snapshot (read-only) or a Transaction."""
    import zarr

    from .snapshot import Snapshot
    from .zarr_store import MrepoStore

    validate_name(name, "array name")
    meta = _zarr_meta(view, name)
    if meta is None or meta.get("node_type") != "array":
        raise NotFound("no such array", name)
    if isinstance(view, Snapshot):
        if view.commit is None:
            raise NotFound("no such array", name)
        store = MrepoStore(str(view.objects.gitdir.parent), commit=view.commit)
        return zarr.open_array(store=store, path=name, mode="r")
    return zarr.open_array(store=MrepoStore(str(view.repo.path), txn=view.id), path=name, mode="r+")
