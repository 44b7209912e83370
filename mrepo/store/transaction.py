"""Transactions: staged key changes on top of a base commit, committed with CAS.

A transaction lives on disk in ``mrepo/txn/<id>/`` (``meta.json`` and an
append-only ``log`` of key changes), so that several processes and several
:class:`~mrepo.store.zarr_store.MrepoStore` objects (pickled, re-opened) see
the same staged state. Chunk bytes go to the chunk store and blob bytes to the
git object database as soon as they are set; ``commit`` makes them reachable
by building a tree, writing a commit and moving the branch ref with one
compare-and-swap. If the branch moved meanwhile and the other commit touched
none of the same keys, the changes are rebased onto it; otherwise a retryable
:class:`~mrepo.errors.ConflictError` is raised. The CLI's staging area (the
"index") is the transaction named ``index``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dulwich.objects import Blob, Commit

from ..errors import ConflictError, InvalidInput, NotFound
from .atomic import FileLock, atomic_write, crashpoint, fsync_dir
from .digest import canonical_json
from .layout import COMMIT_META_PATH, FORMAT_PATH, bad_key_component, is_blob_key
from .snapshot import Entry, Snapshot

if TYPE_CHECKING:
    from .repository import Repository
    from .zarr_store import MrepoStore

__all__ = ["Transaction", "INDEX"]

INDEX = "index"
FORMAT_DOC = {"format": "mrepo", "version": 1}

# process-wide cache of replayed logs: path -> (inode, offset, overlay)
_LOGS: dict[str, tuple[int, int, dict[str, Entry | None]]] = {}
_LOGS_LOCK = threading.Lock()


def _check_key(key: str) -> str:
    if not key or any(c in key for c in "\t\n\r") or key.startswith("/") or "//" in key:
        raise InvalidInput("invalid key", repr(key))
    comp = bad_key_component(key)
    if comp is not None:
        raise InvalidInput(f"invalid key: '.', '..' and names git reserves cannot be components ('{comp}')", repr(key))
    return key


def _encode_op(key: str, ent: Entry | None) -> str:
    if ent is None:
        return f"D\t{key}\n"
    return f"S\t{ent.kind}\t{ent.id}\t{'' if ent.size is None else ent.size}\t{key}\n"


class Transaction:
    """Staged changes on a base commit.

    Use :meth:`Repository.transaction` to make one. Keys are tree paths
    (``data/<zarr key>``, ``docs/<name>``); most code uses the zarr
    :attr:`store` or the helpers in :mod:`mrepo.store.arrays` instead.
    """

    def __init__(self, repo: "Repository", txn_id: str) -> None:
        self.repo = repo
        self.id = txn_id
        self.dir = repo.mrepo_dir / "txn" / txn_id
        self.log_path = self.dir / "log"
        self.meta_path = self.dir / "meta.json"
        if not self.meta_path.exists():
            raise NotFound("no such transaction", txn_id)
        self.lock = FileLock(self.dir / "lock", what=f"transaction {txn_id}")
        self._snapshots: dict[str | None, Snapshot] = {}

    # -- creation ------------------------------------------------------------
    @classmethod
    def create(
        cls, repo: "Repository", *, branch: str | None, base: str | None, txn_id: str | None = None
    ) -> "Transaction":
        txn_id = txn_id or f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
        d = repo.mrepo_dir / "txn" / txn_id
        d.mkdir(parents=True, exist_ok=True)
        atomic_write(d / "meta.json", canonical_json({"branch": branch, "base": base, "created": time.time()}))
        (d / "log").touch()
        return cls(repo, txn_id)

    # -- meta ------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        return json.loads(self.meta_path.read_bytes())

    @property
    def base(self) -> str | None:
        return self.meta["base"]

    @property
    def branch(self) -> str | None:
        """Full ref name the commit goes to (``refs/heads/x``) or None for a detached HEAD."""
        return self.meta["branch"]

    def base_snapshot(self) -> Snapshot:
        return self.repo.snapshot_of(self.base)

    # -- the log ---------------------------------------------------------------
    def _overlay(self) -> dict[str, Entry | None]:
        with _LOGS_LOCK:
            return self._overlay_locked()

    def _overlay_locked(self) -> dict[str, Entry | None]:
        key = str(self.log_path)
        try:
            st = os.stat(self.log_path)
        except FileNotFoundError:
            raise NotFound("transaction was discarded", self.id) from None
        cached = _LOGS.get(key)
        if cached is None or cached[0] != st.st_ino or st.st_size < cached[1]:
            cached = (st.st_ino, 0, {})
        ino, offset, overlay = cached
        if st.st_size > offset:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1  # ignore a torn last line
            for line in data[:end].decode("utf-8").splitlines():
                parts = line.split("\t")
                if parts[0] == "D" and len(parts) == 2:
                    overlay[parts[1]] = None
                elif parts[0] == "S" and len(parts) == 5:
                    overlay[parts[4]] = Entry(parts[1], parts[2], int(parts[3]) if parts[3] else None)
            offset += end
        _LOGS[key] = (ino, offset, overlay)
        return overlay

    def staged(self) -> dict[str, Entry | None]:
        """A copy of the staged key -> entry map (None: deleted)."""
        return dict(self._overlay())

    def _append(self, ops: Iterable[tuple[str, Entry | None]]) -> None:
        text = "".join(_encode_op(k, e) for k, e in ops)
        if not text:
            return
        with self.lock:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, text.encode("utf-8"))
            finally:
                os.close(fd)

    # -- reading -------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        ov = self._overlay()
        if key in ov:
            return ov[key]
        return self.base_snapshot().get(key)

    def read(self, key: str) -> bytes | None:
        ent = self.get(key)
        return None if ent is None else self.repo.read_entry(ent, key)

    def iter_entries(self, prefix: str = "") -> Iterator[tuple[str, Entry]]:
        ov = self._overlay()
        for k, ent in self.base_snapshot().iter_entries(prefix):
            if k not in ov:
                yield k, ent
        for k, ent in ov.items():
            if ent is not None and k.startswith(prefix):
                yield k, ent

    def changes(self, against: Snapshot | None = None) -> dict[str, Entry | None]:
        """Staged keys whose value differs from ``against`` (default: the base)."""
        snap = against if against is not None else self.base_snapshot()
        return {k: e for k, e in self._overlay().items() if snap.get(k) != e}

    def is_dirty(self) -> bool:
        return bool(self.changes())

    # -- writing -------------------------------------------------------------
    def _entry_for(self, key: str, data: bytes | bytearray | memoryview) -> Entry:
        if is_blob_key(key):
            sha = self.repo.objects.write(Blob.from_string(bytes(data)))
            return Entry("blob", sha)  # blob entries carry no size: trees do not record one
        ref = self.repo.chunks.put(data)
        return Entry.chunk(ref)

    def set(self, key: str, data: bytes | bytearray | memoryview) -> Entry:
        _check_key(key)
        ent = self._entry_for(key, data)
        self._append([(key, ent)])
        return ent

    def set_many(self, items: Iterable[tuple[str, bytes | bytearray | memoryview]]) -> list[Entry]:
        items = list(items)
        for k, _ in items:
            _check_key(k)
        chunk_items = [(k, v) for k, v in items if not is_blob_key(k)]
        refs = iter(self.repo.chunks.put_many([v for _, v in chunk_items]))
        ents = [Entry.chunk(next(refs)) if not is_blob_key(k) else self._entry_for(k, v) for k, v in items]
        self._append(zip([k for k, _ in items], ents))
        return ents

    def set_entries(self, entries: Mapping[str, Entry | None]) -> None:
        """Stage entries whose content is already stored (copies, reverts, merges)."""
        for k in entries:
            _check_key(k)
        self._append(entries.items())

    def delete(self, key: str) -> None:
        self._append([(_check_key(key), None)])

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; returns how many."""
        keys = sorted({k for k, _ in self.iter_entries(prefix)})
        self._append((k, None) for k in keys)
        return len(keys)

    # -- committing ------------------------------------------------------------
    def commit(
        self,
        message: str,
        *,
        author: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        extra_parents: Iterable[str] = (),
        allow_empty: bool = False,
        max_retries: int = 50,
    ) -> str:
        """Commit the staged changes; return the new commit id.

        Raises
        ------
        ConflictError
            The branch moved and the other commit changed some of the same
            keys; nothing was changed, the caller may retry on the new head.
        InvalidInput
            Nothing to commit (unless ``allow_empty``), or an empty message.
        """
        if not message or not message.strip():
            raise InvalidInput("empty commit message")
        repo = self.repo
        extra_parents = list(extra_parents)
        with self.lock:
            overlay = dict(self._overlay())
            base = self.base
            base_snap = repo.snapshot_of(base)
            changes = {k: e for k, e in overlay.items() if base_snap.get(k) != e}
            for attempt in range(max_retries):
                head = repo._branch_head(self.branch)
                if head != base:
                    head_snap = repo.snapshot_of(head)
                    conflicts = sorted(
                        k
                        for k, e in changes.items()
                        if head_snap.get(k) != base_snap.get(k) and head_snap.get(k) != e
                    )
                    if conflicts:
                        more = f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
                        raise ConflictError(
                            f"{self.branch or 'HEAD'} moved and changed the same keys: "
                            + ", ".join(conflicts[:3])
                            + more
                            + "; re-run on the new head",
                            self.branch or "HEAD",
                        )
                    parent_snap = head_snap
                else:
                    parent_snap = base_snap
                effective = {k: e for k, e in changes.items() if parent_snap.get(k) != e}
                if not effective and not allow_empty and not extra_parents:
                    self._reset(head)
                    raise InvalidInput("nothing to commit")
                commit_id = self._write_commit(parent_snap, head, effective, message, author, metadata, extra_parents)
                crashpoint("before-ref")
                try:
                    repo._move_branch(self.branch, commit_id, expected=head, message=message)
                except ConflictError:
                    if attempt + 1 == max_retries:
                        raise
                    time.sleep(0.01 * (attempt + 1))
                    continue
                crashpoint("after-ref")
                self._reset(commit_id)
                return commit_id
        raise AssertionError("unreachable")

    def _write_commit(
        self,
        parent_snap: Snapshot,
        parent: str | None,
        changes: Mapping[str, Entry | None],
        message: str,
        author: str | None,
        metadata: Mapping[str, Any] | None,
        extra_parents: list[str],
    ) -> str:
        from .treebuild import build_tree

        repo = self.repo
        objs = repo.objects
        blob_edits: dict[str, str | None] = {
            FORMAT_PATH: objs.write(Blob.from_string(json.dumps(FORMAT_DOC, indent=2).encode() + b"\n")),
            COMMIT_META_PATH: (
                objs.write(Blob.from_string(json.dumps(metadata, indent=2, sort_keys=True).encode() + b"\n"))
                if metadata
                else None
            ),
        }
        crashpoint("before-tree")
        tree = build_tree(objs, parent_snap, changes, blob_edits)
        crashpoint("after-tree")
        # every chunk must be durable before anything points at it
        repo.chunks.sync_dirs(e.id for e in changes.values() if e is not None and e.kind == "chunk")
        c = Commit()
        c.tree = tree.encode("ascii")
        c.parents = [p.encode("ascii") for p in ([parent] if parent else []) + extra_parents]
        ident = (author or repo.identity()).encode("utf-8")
        now = int(time.time())
        tz = -time.timezone if not time.localtime().tm_isdst else -time.altzone
        c.author = c.committer = ident
        c.author_time = c.commit_time = now
        c.author_timezone = c.commit_timezone = tz
        c.encoding = b"UTF-8"
        c.message = (message.rstrip("\n") + "\n").encode("utf-8")
        sha = objs.write(c)
        objs.sync()
        return sha

    def _reset(self, new_base: str | None) -> None:
        """Empty the log and rebase the transaction on ``new_base``."""
        m = self.meta
        m["base"] = new_base
        atomic_write(self.meta_path, canonical_json(m))
        tmp = self.dir / f"log.{uuid.uuid4().hex}"
        tmp.touch()
        os.replace(tmp, self.log_path)
        fsync_dir(self.dir)
        _LOGS.pop(str(self.log_path), None)

    def reset(self, base: str | None = None) -> None:
        """Drop every staged change (chunks stay until ``gc``)."""
        with self.lock:
            self._reset(base if base is not None else self.base)

    def rebase_to(self, base: str | None, branch: str | None) -> None:
        """Point a clean transaction at another base and branch (checkout)."""
        with self.lock:
            m = self.meta
            m["branch"] = branch
            atomic_write(self.meta_path, canonical_json(m))
            self._reset(base)

    def discard(self) -> None:
        """Delete the transaction (its log and meta)."""
        import shutil

        _LOGS.pop(str(self.log_path), None)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- zarr ------------------------------------------------------------------
    @property
    def store(self) -> "MrepoStore":
        """A zarr v3 store over this transaction's ``data/`` keys."""
        from .zarr_store import MrepoStore

        return MrepoStore(str(self.repo.path), txn=self.id)

    def __repr__(self) -> str:
        return f"<Transaction {self.id} on {self.branch or 'detached HEAD'} base={str(self.base)[:12]}>"
