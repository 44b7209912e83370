"""A zarr v3 ``Store`` backed by an mrepo transaction (read-write) or commit (read-only).

Keys are zarr keys; they live under ``data/`` in the repository's trees.
Metadata documents become git blobs, every other key a content-addressed chunk
(see :mod:`mrepo.store.layout`). Every chunk read is verified against its
BLAKE3 digest. The store is picklable and compares equal by (repository,
transaction or commit, read-only flag), so zarr and dask can ship it to
other processes, which then see the same staged state.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from ..errors import InvalidInput
from .layout import DATA
from .snapshot import Entry

__all__ = ["MrepoStore"]

# One Repository per path, shared by the stores open on it, and only while
# one is: a store holds its repository, this cache holds it weakly. (A plain
# dict kept every repository, and dulwich's open pack files, alive until the
# interpreter tore its modules down, whose __del__ then failed noisily.)
_REPOS: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
_REPOS_LOCK = threading.Lock()


def _repo(path: str) -> Any:
    from .repository import Repository

    with _REPOS_LOCK:
        r = _REPOS.get(path)
        if r is None:
            r = Repository(path)
            _REPOS[path] = r
        return r


def _slice(data: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset :]
    if isinstance(byte_range, SuffixByteRequest):
        return data[max(0, len(data) - byte_range.suffix) :]
    raise ValueError(f"Unexpected byte_range, got {byte_range}.")


def _check_range(byte_range: Any) -> None:
    if byte_range is not None and not isinstance(byte_range, (RangeByteRequest, OffsetByteRequest, SuffixByteRequest)):
        raise ValueError(f"Unexpected byte_range, got {byte_range}.")


class MrepoStore(Store):
    """zarr v3 store over a transaction (``txn=``) or a commit (``commit=``).

    Parameters
    ----------
    repo:
        Path of the repository.
    txn:
        Transaction id: reads see its staged changes, writes stage new ones.
    commit:
        Commit id: a read-only view of that commit.
    read_only:
        Refuse writes (always True for a commit view).
    """

    supports_writes = True
    supports_deletes = True
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, repo: str, *, txn: str | None = None, commit: str | None = None, read_only: bool = False) -> None:
        if (txn is None) == (commit is None):
            raise InvalidInput("MrepoStore needs exactly one of txn= or commit=")
        super().__init__(read_only=read_only or commit is not None)
        self.repo_path = str(Path(repo).resolve())
        self.txn_id = txn
        self.commit_id = commit
        self._repository: Any = None  # resolved on first use; not pickled

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_repository"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- identity -------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, MrepoStore)
            and (self.repo_path, self.txn_id, self.commit_id, self.read_only)
            == (other.repo_path, other.txn_id, other.commit_id, other.read_only)
        )

    def __hash__(self) -> int:
        return hash((self.repo_path, self.txn_id, self.commit_id, self.read_only))

    def __repr__(self) -> str:
        what = f"txn={self.txn_id}" if self.txn_id else f"commit={self.commit_id}"
        return f"MrepoStore('{self.repo_path}', {what}{', read_only' if self.read_only else ''})"

    def __str__(self) -> str:
        return f"mrepo://{self.repo_path}@{self.txn_id or self.commit_id}"

    def with_read_only(self, read_only: bool = False) -> "MrepoStore":
        return type(self)(self.repo_path, txn=self.txn_id, commit=self.commit_id, read_only=read_only)

    # -- plumbing -------------------------------------------------------------
    @property
    def repository(self) -> Any:
        r = self._repository
        if r is None:
            r = self._repository = _repo(self.repo_path)
        return r

    def _view(self) -> Any:
        r = self.repository
        if self.txn_id is not None:
            return r.open_transaction(self.txn_id)
        return r.snapshot_of(self.commit_id)

    @staticmethod
    def _full(key: str) -> str:
        return f"{DATA}/{key}" if key else DATA

    def _entry(self, key: str) -> Entry | None:
        return self._view().get(self._full(key))

    def _read(self, key: str) -> bytes | None:
        ent = self._entry(key)
        if ent is None:
            return None
        return self.repository.read_entry(ent, key)

    # -- reading --------------------------------------------------------------
    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        _check_range(byte_range)
        data = self._read(key)
        if data is None:
            return None
        prototype = prototype or default_buffer_prototype()
        return prototype.buffer.from_bytes(_slice(data, byte_range))

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if not self._is_open:
            await self._open()
        _check_range(byte_range)
        data = await asyncio.to_thread(self._read, key)
        if data is None:
            return None
        return prototype.buffer.from_bytes(_slice(data, byte_range))

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return self._entry(key) is not None

    async def getsize(self, key: str) -> int:
        ent = self._entry(key)
        if ent is None:
            raise FileNotFoundError(key)
        if ent.size is not None:
            return ent.size
        return len(self.repository.read_entry(ent, key))

    # -- writing --------------------------------------------------------------
    def _txn(self) -> Any:
        self._check_writable()
        if self.txn_id is None:  # pragma: no cover - commit views are read-only
            raise ValueError("store was opened in read-only mode and does not support writing")
        return self.repository.open_transaction(self.txn_id)

    def set_sync(self, key: str, value: Buffer) -> None:
        if not isinstance(value, Buffer):
            raise TypeError(f"MrepoStore.set(): `value` must be a Buffer instance. Got an instance of {type(value)} instead.")
        self._txn().set(self._full(key), value.as_numpy_array().tobytes() if not hasattr(value, "to_bytes") else value.to_bytes())

    async def set(self, key: str, value: Buffer) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        await asyncio.to_thread(self.set_sync, key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._check_writable()
        if self._entry(key) is None:
            await self.set(key, value)

    def delete_sync(self, key: str) -> None:
        txn = self._txn()
        if txn.get(self._full(key)) is not None:
            txn.delete(self._full(key))

    async def delete(self, key: str) -> None:
        self._check_writable()
        self.delete_sync(key)

    async def delete_dir(self, prefix: str) -> None:
        txn = self._txn()
        prefix = prefix.rstrip("/")
        txn.delete_prefix(self._full(prefix) + "/" if prefix else DATA + "/")

    async def clear(self) -> None:
        self._txn().delete_prefix(DATA + "/")

    # -- listing --------------------------------------------------------------
    def _keys(self, prefix: str) -> list[str]:
        full = self._full(prefix) if prefix else DATA + "/"
        n = len(DATA) + 1
        return sorted({k[n:] for k, _ in self._view().iter_entries(full) if k.startswith(DATA + "/")})

    async def list(self) -> AsyncIterator[str]:
        for k in self._keys(""):
            yield k

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for k in self._keys(prefix):
            yield k

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        p = prefix + "/" if prefix else ""
        seen: set[str] = set()
        for k in self._keys(p):
            child = k[len(p) :].split("/", 1)[0]
            if child and child not in seen:
                seen.add(child)
                yield child
