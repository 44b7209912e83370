"""Garbage collection of chunks that no ref, and no staged transaction, reaches.

Loose chunks are removed one by one. A pack is immutable: one whose chunks
are all unreachable is dropped (index first); one that still holds reachable
chunks is rewritten: its reachable chunks, read and verified, go into a new
pack, committed by its index before the old pack is dropped, so every
reachable chunk stays readable at every instant. The grace period of a pack
is measured from its mtime (a writer that reuses a packed chunk refreshes it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from dulwich.objects import Commit, Tag

from .atomic import FileLock
from .snapshot import Snapshot

__all__ = ["GcReport", "gc", "reachable_chunks", "DEFAULT_GRACE_SECONDS"]

DEFAULT_GRACE_SECONDS = 14 * 24 * 3600


@dataclass
class GcReport:
    reachable_chunks: int = 0
    removed_chunks: int = 0
    freed_bytes: int = 0
    kept_recent_chunks: int = 0
    kept_recent_bytes: int = 0
    removed_temp_files: int = 0
    dropped_packs: int = 0  # packs removed (no reachable chunk left)
    rewritten_packs: int = 0  # packs rewritten without their unreachable chunks
    dry_run: bool = False


def _reachable_commits(repo) -> set[str]:
    tips = list(repo.refs.list("refs/").values())
    _, head = repo.refs.read_head()
    if head:
        tips.append(head)
    seen: set[str] = set()
    commits: set[str] = set()
    stack = tips
    while stack:
        sha = stack.pop()
        if sha in seen:
            continue
        seen.add(sha)
        obj = repo.objects.read(sha)
        if isinstance(obj, Tag):
            stack.append(obj.object[1].decode("ascii"))
        elif isinstance(obj, Commit):
            commits.add(sha)
            stack.extend(p.decode("ascii") for p in obj.parents)
    return commits


def reachable_chunks(repo) -> set[str]:
    """Digests of chunks reachable from refs, HEAD and staged transactions."""
    out: set[str] = set()
    seen_manifests: set[str] = set()
    for c in _reachable_commits(repo):
        snap = repo.snapshot_of(c)
        _collect(snap, "", out, seen_manifests, set())
    txn_dir = repo.mrepo_dir / "txn"
    if txn_dir.exists():
        for tid in os.listdir(txn_dir):
            try:
                txn = repo.open_transaction(tid)
                for ent in txn.staged().values():
                    if ent is not None and ent.kind == "chunk":
                        out.add(ent.id)
            except Exception:
                continue
    return out


def _collect(snap: Snapshot, folder: str, out: set[str], seen_manifests: set[str], seen_trees: set[str]) -> None:
    import stat

    tid = snap.tree_id(folder)
    if tid is None or tid in seen_trees:
        return
    seen_trees.add(tid)
    for name, (mode, sha) in (snap.dir(folder) or {}).items():
        path = f"{folder}/{name}" if folder else name
        if stat.S_ISDIR(mode):
            _collect(snap, path, out, seen_manifests, seen_trees)
        elif name == "manifest.json" and path.startswith("data/") and sha not in seen_manifests:
            seen_manifests.add(sha)
            out.update(ref.digest for ref in snap.manifest(folder).values())


def gc(repo, *, grace_seconds: float = DEFAULT_GRACE_SECONDS, dry_run: bool = False) -> GcReport:
    """Remove unreachable chunks whose files are older than ``grace_seconds``.

    Chunks written by a transaction that is still open are reachable; the
    grace period protects chunks written by a process that has not yet
    recorded them anywhere (so use 0 only when nothing else writes).
    """
    rep = GcReport(dry_run=dry_run)
    with FileLock(repo.mrepo_dir / "locks" / "gc.lock", what="gc"):
        keep = reachable_chunks(repo)
        rep.reachable_chunks = len(keep)
        now = time.time()
        for digest in list(repo.chunks.iter_loose_digests()):
            if digest in keep:
                continue
            p = repo.chunks.path(digest)
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if now - st.st_mtime < grace_seconds:
                rep.kept_recent_chunks += 1
                rep.kept_recent_bytes += st.st_size
                continue
            rep.removed_chunks += 1
            rep.freed_bytes += st.st_size
            if not dry_run:
                repo.chunks.delete(digest)
        _gc_packs(repo.chunks, keep, rep, now, grace_seconds, dry_run)
        for p in repo.chunks.stale_temp_files(max(grace_seconds, 3600.0) if grace_seconds > 0 else 0):
            rep.removed_temp_files += 1
            if not dry_run:
                p.unlink(missing_ok=True)
    return rep


def _gc_packs(store, keep: set[str], rep: GcReport, now: float, grace_seconds: float, dry_run: bool) -> None:
    for pid, idx in sorted(store.packs().items()):
        try:
            st = store.pack_path(pid).stat()
        except FileNotFoundError:
            continue  # an index without its pack: fsck reports it, gc leaves it
        digests = idx.digests_hex()
        sizes = idx.entries["size"].tolist()
        dead = [(d, n) for d, n in zip(digests, sizes) if d not in keep]
        if not dead:
            continue
        if now - st.st_mtime < grace_seconds:
            rep.kept_recent_chunks += len(dead)
            rep.kept_recent_bytes += sum(n for _, n in dead)
            continue
        rep.removed_chunks += len(dead)
        rep.freed_bytes += sum(n for _, n in dead)
        if len(dead) == len(digests):
            rep.dropped_packs += 1
            if not dry_run:
                store.drop_pack(pid)
        else:
            rep.rewritten_packs += 1
            if not dry_run:
                store.repack(pid, [d for d in digests if d in keep])
