"""zarr-python's own Store conformance suite, run against MrepoStore."""

from __future__ import annotations

import pytest
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.testing.store import StoreTests

import mrepo
from mrepo.store import MrepoStore


class TestMrepoStore(StoreTests[MrepoStore, cpu.Buffer]):
    store_cls = MrepoStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self, tmp_path) -> dict:
        repo = mrepo.init_repo(tmp_path / "r")
        txn = repo.transaction()
        return {"repo": str(repo.path), "txn": txn.id}

    async def set(self, store: MrepoStore, key: str, value: Buffer) -> None:
        # bypass the store: stage through the transaction directly
        store.repository.open_transaction(store.txn_id).set(f"data/{key}", value.to_bytes())

    async def get(self, store: MrepoStore, key: str) -> Buffer:
        data = store.repository.open_transaction(store.txn_id).read(f"data/{key}")
        assert data is not None, key
        return self.buffer_cls.from_bytes(data)

    def test_store_repr(self, store: MrepoStore) -> None:
        assert repr(store).startswith("MrepoStore(") and store.txn_id in repr(store)

    def test_store_supports_writes(self, store: MrepoStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: MrepoStore) -> None:
        assert store.supports_listing


async def test_commit_view_is_read_only_and_verified(tmp_path) -> None:
    """A committed state opens as a read-only store and reads back what was written."""
    repo = mrepo.init_repo(tmp_path / "r")
    txn = repo.transaction()
    await txn.store.set("a/zarr.json", cpu.Buffer.from_bytes(b"{}"))
    await txn.store.set("a/c/0", cpu.Buffer.from_bytes(b"\x01\x02"))
    sha = txn.commit("two keys")
    view = MrepoStore(str(repo.path), commit=sha)
    assert view.read_only
    got = await view.get("a/c/0", default_buffer_prototype())
    assert got is not None and got.to_bytes() == b"\x01\x02"
    with pytest.raises(ValueError, match="read-only"):
        await view.set("b", cpu.Buffer.from_bytes(b"x"))
