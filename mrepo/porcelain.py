"""High-level operations that the CLI composes (and that Python users can call).

Like dulwich's porcelain: each function takes a repository (or a path) and
plain arguments, does one user-level thing, and returns a dataclass.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FormatError, InvalidInput, NotFound
from .io.images import IMAGE_SUFFIXES, read_image
from .store import Repository, Transaction
from .store.arrays import ArrayInfo, array_info, check_free, delete_node, node_kind, write_array, write_document
from .store.diff import NodeChange, summarize_changes
from .store.layout import data_key, doc_key, validate_name
from .store.repository import CommitInfo

__all__ = [
    "AddResult",
    "Status",
    "add",
    "remove",
    "commit",
    "status",
    "export",
    "parse_spec",
    "DOCUMENT_SUFFIXES",
]

DOCUMENT_SUFFIXES = (".json", ".toml", ".txt", ".md", ".yaml", ".yml", ".star", ".xml")


@dataclass
class AddResult:
    path: Path
    name: str
    kind: str  # "array" | "document"
    info: ArrayInfo | None = None
    notes: list[str] = field(default_factory=list)


def _name_for(path: Path) -> str:
    stem = path.name
    for suf in IMAGE_SUFFIXES + DOCUMENT_SUFFIXES:
        if stem.lower().endswith(suf) and len(stem) > len(suf):
            stem = stem[: -len(suf)]
            break
    return stem


def add(
    repo: Repository,
    paths: Sequence[str | os.PathLike[str]],
    *,
    name: str | None = None,
    chunks: tuple[int, ...] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[AddResult]:
    """Stage image files as arrays (MRC family, TIFF, NPY) and text files as
    documents. All files are opened and checked before anything is staged, and
    everything is staged in one step: a bad file leaves the index unchanged.
    """
    if not paths:
        raise InvalidInput("nothing to add")
    if name is not None and len(paths) != 1:
        raise InvalidInput("--as names one file; give a single path")
    opened: list[tuple[Path, str, str, Any]] = []
    names_seen: set[str] = set()
    for raw in paths:
        p = Path(raw)
        nm = validate_name(name if name is not None else _name_for(p), "array name")
        if nm in names_seen:
            raise InvalidInput("two files would get the same name; use --as", nm)
        names_seen.add(nm)
        if p.suffix.lower() in DOCUMENT_SUFFIXES:
            if not p.exists():
                raise NotFound("no such file", str(p))
            try:
                content = p.read_bytes()
                content.decode("utf-8")
            except UnicodeDecodeError:
                raise FormatError("document is not UTF-8 text", str(p)) from None
            opened.append((p, nm, "document", content))
        else:
            opened.append((p, nm, "array", read_image(p)))
    index = repo.index
    scratch = Transaction.create(repo, branch=index.branch, base=index.base)
    try:
        results = []
        for p, nm, kind, obj in opened:
            if kind == "document":
                write_document(scratch, nm, obj)
                results.append(AddResult(p, nm, "document"))
                continue
            attrs: dict[str, Any] = {"source": obj.source}
            if obj.voxel_size is not None and any(v is not None for v in obj.voxel_size):
                attrs["voxel_size"] = [None if v is None else float(v) for v in obj.voxel_size]
                attrs["voxel_size_unit"] = "angstrom"
            info = write_array(scratch, nm, obj.data, chunks=chunks, attributes=attrs, progress=progress)
            results.append(AddResult(p, nm, "array", info, list(obj.source.get("notes", []))))
        for _, nm, kind, _ in opened:
            check_free(index, nm, kind)
        # replace whatever the index held under these names, in one step
        ops: dict[str, Any] = {}
        for _, nm, kind, _ in opened:
            if kind == "array":
                ops.update({k: None for k, _ in index.iter_entries(data_key(nm) + "/")})
            elif index.get(doc_key(nm)) is not None:
                ops[doc_key(nm)] = None
        ops.update(scratch.staged())
        index.set_entries(ops)
    finally:
        scratch.discard()
    return results


def remove(repo: Repository, names: Sequence[str]) -> int:
    """Stage the removal of arrays/documents; returns how many keys go."""
    idx = repo.index
    return sum(delete_node(idx, n) for n in names)


def commit(repo: Repository, message: str, *, allow_empty: bool = False, metadata: dict[str, Any] | None = None) -> CommitInfo:
    sha = repo.index.commit(message, allow_empty=allow_empty, metadata=metadata)
    return repo.commit_info(sha)


@dataclass
class Status:
    branch: str | None
    head: CommitInfo | None
    changes: list[NodeChange]

    @property
    def clean(self) -> bool:
        return not self.changes


def status(repo: Repository) -> Status:
    h = repo.head()
    idx = repo.index
    head_snap = repo.snapshot_of(h.commit)
    ch = {k: (head_snap.get(k), e) for k, e in idx.changes(head_snap).items()}
    return Status(h.branch, repo.commit_info(h.commit) if h.commit else None, summarize_changes(ch, head_snap, idx))


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``REV:PATH`` -> (rev, path); ``REV`` -> (rev, None); ``:PATH`` -> ('HEAD', path)."""
    if ":" in spec:
        rev, _, path = spec.partition(":")
        return (rev or "HEAD"), (path.strip("/") or "")
    return spec, None


def export(repo: Repository, spec: str, out: str | os.PathLike[str]) -> tuple[Path, ArrayInfo | None]:
    """Write the array or document ``REV:PATH`` to ``out``.

    Arrays become MRC (``.mrc``, ``.mrcs``, ``.map``; voxel size from the
    array's ``voxel_size`` attribute), ``.npy`` or ``.tif``; documents are
    written as they are.
    """
    from .io.mrc import MRC_SUFFIXES, write_mrc

    rev, path = parse_spec(spec)
    if not path:
        raise InvalidInput("export needs REV:PATH", spec)
    validate_name(path, "name")
    sha = repo.resolve(rev)
    snap = repo.snapshot_of(sha)
    out = Path(out)
    kind = node_kind(snap, path)
    if kind is None:
        raise NotFound("no such array or document", f"{rev}:{path}")
    if kind == "group":
        raise InvalidInput("is a group; export one of its arrays", f"{rev}:{path}")
    if kind == "document":
        from .store.atomic import atomic_write

        atomic_write(out, repo.read_document(sha, path))
        return out, None
    info = array_info(snap, path)
    arr = repo.open_array(sha, path)
    data = arr[...]
    suffix = out.suffix.lower()
    if suffix in MRC_SUFFIXES:
        if data.ndim not in (2, 3):
            raise InvalidInput(f"MRC holds 2D or 3D arrays; this one is {data.ndim}D", f"{rev}:{path}")
        vs = info.attributes.get("voxel_size")
        voxel = tuple(vs) if vs else None
        src = info.attributes.get("source", {})
        stack = suffix == ".mrcs" or (src.get("format") == "mrc" and src.get("ispg") == 0 and data.ndim == 3)
        origin = tuple(src["origin_angstrom"]) if isinstance(src.get("origin_angstrom"), list) else None
        write_mrc(out, data, voxel, origin=origin, stack=stack, label=f"mrepo export {sha[:12]}:{path}")
    elif suffix == ".npy":
        from .store.atomic import atomic_write
        import io

        buf = io.BytesIO()
        np.save(buf, data)
        atomic_write(out, buf.getvalue())
    elif suffix in (".tif", ".tiff"):
        import tifffile

        tmp = out.with_name(f".tmp-{out.name}")
        tifffile.imwrite(tmp, data)
        os.replace(tmp, out)
    else:
        raise InvalidInput(f"unknown output type '{suffix}' (use .mrc, .mrcs, .map, .npy or .tif)", str(out))
    return out, info
