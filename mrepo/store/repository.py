"""The repository: a git repository with a chunk store beside its objects.

``DIR/.git`` is a bare git repository (``core.bare = true``), so ``git -C DIR
log``, ``git -C DIR show REV:PATH`` and ``git -C DIR fsck`` work; mrepo keeps
its own state in ``DIR/.git/mrepo/`` (format version, chunk store,
transactions, locks). ``DIR`` itself stays free for the user's files.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dulwich.objects import Commit, Tag
from dulwich.repo import Repo as DulwichRepo

from ..errors import ConflictError, CorruptObject, InvalidInput, MrepoError, NotARepository, NotFound
from .atomic import atomic_write
from .chunks import ChunkStore
from .layout import COMMIT_META_PATH, DATA, DOCS, data_key, doc_key, validate_name
from .objects import GitObjects
from .refs import ANY, MISSING, RefStore
from .snapshot import Entry, Snapshot
from .transaction import INDEX, Transaction

if TYPE_CHECKING:
    import zarr

    from .diff import NodeChange
    from .fsck import FsckReport
    from .gc import GcReport

__all__ = ["Repository", "CommitInfo", "HeadInfo", "init_repo", "open_repo", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_HEX_RE = re.compile(r"^[0-9a-f]{4,40}$")
_SUFFIX_RE = re.compile(r"(~\d*|\^\d*)")


@dataclass(frozen=True)
class HeadInfo:
    branch: str | None  # short name, None when detached
    commit: str | None  # None for an unborn branch


@dataclass(frozen=True)
class CommitInfo:
    id: str
    parents: tuple[str, ...]
    author: str
    time: int
    timezone: int
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return self.message.splitlines()[0] if self.message else ""


class Repository:
    """An mrepo repository. Use :func:`open_repo` or :func:`init_repo`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()
        self.gitdir = self.path / ".git"
        self.mrepo_dir = self.gitdir / "mrepo"
        self.objects = GitObjects(self.gitdir)
        self.refs = RefStore(self.gitdir, self.mrepo_dir / "locks" / "refs.lock")
        self.chunks = ChunkStore(self.mrepo_dir / "chunks")
        self.chunks.set_fetcher(self._configured_fetcher, deferred=True)
        self._snapshots: OrderedDict[str | None, Snapshot] = OrderedDict()

    def config_value(self, section: tuple[str, ...], key: str) -> str | None:
        """A value of the repository's git config, or None."""
        from dulwich.config import ConfigFile

        try:
            cfg = ConfigFile.from_path(str(self.gitdir / "config"))
            return cfg.get(tuple(s.encode() for s in section), key.encode()).decode("utf-8")
        except (KeyError, FileNotFoundError):
            return None

    def _configured_fetcher(self):
        """The chunk fetcher named by ``mrepo.fetcher`` in the config (lazy
        repositories), built on the first missing chunk; None if unset."""
        from .chunks import fetcher_factory

        name = self.config_value(("mrepo",), "fetcher")
        return fetcher_factory(name)(self) if name else None

    def __repr__(self) -> str:
        return f"<mrepo.Repository {self.path}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Repository) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # -- identity ------------------------------------------------------------
    def identity(self) -> str:
        env = os.environ.get("MREPO_AUTHOR")
        if env:
            return env
        name = os.environ.get("GIT_AUTHOR_NAME")
        email = os.environ.get("GIT_AUTHOR_EMAIL")
        try:
            cfg = DulwichRepo(str(self.gitdir)).get_config_stack()
            name = name or cfg.get((b"user",), b"name").decode()
            email = email or cfg.get((b"user",), b"email").decode()
        except (KeyError, Exception):
            pass
        try:
            user = getpass.getuser()
        except Exception:
            user = "mrepo"
        name = name or user
        email = email or f"{user}@{socket.gethostname() or 'localhost'}"
        return f"{name} <{email}>"

    # -- revisions -----------------------------------------------------------
    def head(self) -> HeadInfo:
        target, sha = self.refs.read_head()
        return HeadInfo(target[len("refs/heads/") :] if target else None, sha)

    def _peel(self, sha: str, rev: str) -> str:
        obj = self.objects.read(sha)
        while isinstance(obj, Tag):
            sha = obj.object[1].decode("ascii")
            obj = self.objects.read(sha)
        if not isinstance(obj, Commit):
            raise InvalidInput(f"not a commit: {obj.type_name.decode()}", rev)
        return sha

    def _resolve_base(self, name: str, rev: str) -> str:
        if name in ("HEAD", "@"):
            _, sha = self.refs.read_head()
            if sha is None:
                raise NotFound("HEAD has no commit yet", rev)
            return sha
        candidates = [name] if name.startswith("refs/") else [f"refs/heads/{name}", f"refs/tags/{name}", f"refs/remotes/{name}", f"refs/{name}"]
        for ref in candidates:
            try:
                RefStore.check_name(ref)
            except InvalidInput:
                continue
            sha = self.refs.read(ref)
            if sha is not None:
                return self._peel(sha, rev)
        if _HEX_RE.match(name):
            if len(name) == 40 and self.objects.exists(name):
                return self._peel(name, rev)
            matches = [s for s, _ in self.objects.iter_loose() if s.startswith(name)] if len(name) < 40 else []
            commits = [s for s in matches if isinstance(self.objects.read(s), (Commit, Tag))]
            if len(commits) == 1:
                return self._peel(commits[0], rev)
            if len(commits) > 1:
                raise InvalidInput(f"ambiguous revision: {len(commits)} commits start with it", rev)
        raise NotFound("unknown revision", rev)

    def resolve(self, rev: str) -> str:
        """Commit id of ``rev``: HEAD, a branch, a tag, a (short) id, with ``~N``/``^N``."""
        if not isinstance(rev, str) or not rev or any(c.isspace() for c in rev) or ":" in rev:
            raise InvalidInput("invalid revision", repr(rev))
        m = _SUFFIX_RE.search(rev)
        base = rev[: m.start()] if m else rev
        sha = self._resolve_base(base, rev)
        for suffix in _SUFFIX_RE.findall(rev[m.start() :] if m else ""):
            n = int(suffix[1:]) if len(suffix) > 1 else 1
            c = self.objects.commit(sha)
            if suffix[0] == "~":
                for _ in range(n):
                    if not c.parents:
                        raise NotFound("revision goes beyond the first commit", rev)
                    sha = c.parents[0].decode("ascii")
                    c = self.objects.commit(sha)
            else:
                if n == 0:
                    continue
                if len(c.parents) < n:
                    raise NotFound(f"commit has no parent {n}", rev)
                sha = c.parents[n - 1].decode("ascii")
        return sha

    def snapshot_of(self, commit: str | None) -> Snapshot:
        snap = self._snapshots.get(commit)
        if snap is None:
            tree = self.objects.commit(commit).tree.decode("ascii") if commit else None
            snap = Snapshot(self.objects, tree, commit)
            self._snapshots[commit] = snap
            if len(self._snapshots) > 32:
                self._snapshots.popitem(last=False)
        else:
            self._snapshots.move_to_end(commit)
        return snap

    def snapshot(self, rev: str = "HEAD") -> Snapshot:
        return self.snapshot_of(self.resolve(rev))

    def commit_info(self, sha: str) -> CommitInfo:
        c = self.objects.commit(sha)
        meta: dict[str, Any] = {}
        raw = self.snapshot_of(sha).read_blob(COMMIT_META_PATH)
        if raw:
            try:
                meta = json.loads(raw)
            except json.JSONDecodeError:
                raise CorruptObject("commit metadata is not valid JSON", f"{sha}:{COMMIT_META_PATH}") from None
        return CommitInfo(
            id=sha,
            parents=tuple(p.decode("ascii") for p in c.parents),
            author=c.author.decode("utf-8", "replace"),
            time=c.commit_time,
            timezone=c.commit_timezone,
            message=c.message.decode("utf-8", "replace"),
            metadata=meta,
        )

    def log(self, rev: str = "HEAD", *, max_count: int | None = None, first_parent: bool = False) -> list[CommitInfo]:
        """Commits reachable from ``rev``, newest first."""
        start = self.resolve(rev)
        seen = {start}
        frontier = [self.commit_info(start)]
        out: list[CommitInfo] = []
        while frontier and (max_count is None or len(out) < max_count):
            frontier.sort(key=lambda ci: ci.time)
            ci = frontier.pop()
            out.append(ci)
            parents = ci.parents[:1] if first_parent else ci.parents
            for p in parents:
                if p not in seen:
                    seen.add(p)
                    frontier.append(self.commit_info(p))
        return out

    # -- branches and tags ------------------------------------------------------
    def branches(self) -> dict[str, str]:
        return {k[len("refs/heads/") :]: v for k, v in self.refs.list("refs/heads/").items()}

    def tags(self) -> dict[str, str]:
        return {k[len("refs/tags/") :]: v for k, v in self.refs.list("refs/tags/").items()}

    def create_branch(self, name: str, start: str = "HEAD") -> str:
        ref = f"refs/heads/{name}"
        RefStore.check_name(ref)
        sha = self.resolve(start)
        self.refs.set(ref, sha, MISSING, message=f"branch: Created from {start}", ident=self.identity().encode())
        return sha

    def delete_branch(self, name: str) -> None:
        if self.head().branch == name:
            raise InvalidInput("cannot delete the checked-out branch", name)
        self.refs.delete(f"refs/heads/{name}")

    def create_tag(self, name: str, rev: str = "HEAD", message: str | None = None) -> str:
        ref = f"refs/tags/{name}"
        RefStore.check_name(ref)
        sha = self.resolve(rev)
        target = sha
        if message:
            t = Tag()
            t.object = (Commit, sha.encode("ascii"))
            t.name = name.encode("utf-8")
            t.tagger = self.identity().encode("utf-8")
            import time as _t

            t.tag_time = int(_t.time())
            t.tag_timezone = 0
            t.message = (message.rstrip("\n") + "\n").encode("utf-8")
            target = self.objects.write(t)
            self.objects.sync()
        self.refs.set(ref, target, MISSING, message=f"tag: {name}", ident=self.identity().encode())
        return sha

    def delete_tag(self, name: str) -> None:
        self.refs.delete(f"refs/tags/{name}")

    # -- moving HEAD -----------------------------------------------------------
    def _branch_head(self, branch: str | None) -> str | None:
        if branch is None:
            target, sha = self.refs.read_head()
            return sha
        return self.refs.read(branch)

    def _move_branch(self, branch: str | None, new: str, *, expected: str | None, message: str) -> None:
        exp = MISSING if expected is None else expected
        if branch is None:
            self.refs.set_head(detached=new, expected=exp if expected is not None else ANY)
        else:
            self.refs.set(branch, new, exp, message=f"commit: {message.splitlines()[0]}", ident=self.identity().encode())

    # -- transactions -------------------------------------------------------------
    def transaction(self, branch: str | None = None) -> Transaction:
        """A new transaction on ``branch`` (default: the checked-out branch, or
        the detached HEAD) based on its current head."""
        if branch is None:
            target, sha = self.refs.read_head()
            return Transaction.create(self, branch=target, base=sha)
        ref = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
        RefStore.check_name(ref)
        sha = self.refs.read(ref)
        if sha is None:
            raise NotFound("no such branch", branch)
        return Transaction.create(self, branch=ref, base=sha)

    def open_transaction(self, txn_id: str) -> Transaction:
        return Transaction(self, txn_id)

    @property
    def index(self) -> Transaction:
        """The staging area used by ``mrepo add``/``commit`` (follows HEAD)."""
        target, sha = self.refs.read_head()
        try:
            txn = Transaction(self, INDEX)
        except NotFound:
            return Transaction.create(self, branch=target, base=sha, txn_id=INDEX)
        meta = txn.meta
        if meta["base"] != sha or meta["branch"] != target:
            if not txn.is_dirty():
                txn.rebase_to(sha, target)
            elif meta["branch"] == target and sha is not None:
                # a commit that moved the branch but died before emptying the
                # index leaves exactly the committed values staged: recover
                head = self.snapshot_of(sha)
                if all(head.get(k) == e for k, e in txn.staged().items()):
                    txn.rebase_to(sha, target)
        return txn

    def checkout(self, rev: str, *, force: bool = False) -> HeadInfo:
        """Switch HEAD to a branch, or detach it at a commit."""
        idx = self.index
        if idx.is_dirty() and not force:
            raise ConflictError("staged changes would be lost; commit them or run `mrepo reset` first", "index")
        if not rev.startswith("refs/") and self.refs.read(f"refs/heads/{rev}") is not None:
            self.refs.set_head(branch=f"refs/heads/{rev}")
        else:
            sha = self.resolve(rev)
            self.refs.set_head(detached=sha)
        info = self.head()
        target, _ = self.refs.read_head()
        idx.rebase_to(info.commit, target)
        return info

    # -- reading content ---------------------------------------------------------
    def read_entry(self, ent: Entry, key: str = "") -> bytes:
        if ent.kind == "blob":
            return self.objects.blob(ent.id)
        return self.chunks.get(ent.id)

    def open_array(self, rev: str, name: str) -> "zarr.Array":
        """A read-only ``zarr.Array`` of array ``name`` at ``rev`` (lazy, verified reads)."""
        from .arrays import open_array

        return open_array(self, self.resolve(rev), name)

    def read_document(self, rev: str, name: str) -> bytes:
        validate_name(name, "document name")
        data = self.snapshot(rev).read_blob(doc_key(name))
        if data is None:
            raise NotFound("no such document", f"{rev}:{name}")
        return data

    def commit_metadata(self, rev: str = "HEAD") -> dict[str, Any]:
        return self.commit_info(self.resolve(rev)).metadata

    # -- history operations -------------------------------------------------------
    def diff(self, a: str, b: str) -> list["NodeChange"]:
        """Per-array/document changes from revision ``a`` to revision ``b``."""
        from .diff import changed_keys, summarize_changes

        sa, sb = self.snapshot(a), self.snapshot(b)
        return summarize_changes(changed_keys(sa, sb), sa, sb)

    def revert(self, rev: str, *, message: str | None = None) -> str:
        """Commit, on the current branch, the inverse of the changes of ``rev``.

        Keys that later commits changed again are conflicts: nothing is
        committed and :class:`~mrepo.errors.ConflictError` names them.
        """
        from .diff import summarize_changes
        from .merge import three_way

        sha = self.resolve(rev)
        info = self.commit_info(sha)
        if len(info.parents) > 1:
            raise InvalidInput("cannot revert a merge commit", rev)
        idx = self.index
        if idx.is_dirty():
            raise ConflictError("staged changes present; commit them or run `mrepo reset` first", "index")
        head = self.head().commit
        parent = info.parents[0] if info.parents else None
        tw = three_way(self.snapshot_of(sha), self.snapshot_of(head), self.snapshot_of(parent))
        if tw.conflicts:
            names = sorted({n.name or "/" for n in summarize_changes(
                {k: (v[1], v[2]) for k, v in tw.conflicts.items()}, self.snapshot_of(head), self.snapshot_of(parent))})
            raise ConflictError(
                "later commits changed the same data: " + ", ".join(names[:5]) + ("..." if len(names) > 5 else ""),
                sha[:12],
            )
        if not tw.changes:
            raise InvalidInput("nothing to revert: its changes are already undone", rev)
        idx.set_entries(tw.changes)
        msg = message or f'Revert "{info.summary}"\n\nThis reverts commit {sha}.'
        return idx.commit(msg, metadata={"operation": "revert", "reverted": sha})

    def fsck(self, **kw: Any) -> "FsckReport":
        from .fsck import fsck

        return fsck(self, **kw)

    def gc(self, **kw: Any) -> "GcReport":
        from .gc import gc

        return gc(self, **kw)


def _write_format(mrepo_dir: Path) -> None:
    atomic_write(mrepo_dir / "format.json", json.dumps({"format": "mrepo", "version": FORMAT_VERSION}, indent=2) + "\n")


def init_repo(path: str | os.PathLike[str], *, branch: str = "main") -> Repository:
    """Create a repository at ``path`` (created if missing) with a first commit."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InvalidInput("not a directory", str(p))
    gitdir = p / ".git"
    if (gitdir / "mrepo" / "format.json").exists():
        raise InvalidInput("already an mrepo repository", str(p))
    if gitdir.exists():
        raise InvalidInput("already a git repository; mrepo needs a folder of its own", str(p))
    p.mkdir(parents=True, exist_ok=True)
    DulwichRepo.init_bare(str(gitdir), mkdir=True)
    cfg_path = gitdir / "config"
    cfg = cfg_path.read_text()
    if "bare = true" not in cfg:
        cfg = cfg.replace("bare = false", "bare = true")
    cfg += "[mrepo]\n\tformatVersion = %d\n" % FORMAT_VERSION
    atomic_write(cfg_path, cfg)
    atomic_write(gitdir / "HEAD", f"ref: refs/heads/{branch}\n")
    atomic_write(gitdir / "description", "mrepo repository: cryo-EM populations under version control\n")
    mdir = gitdir / "mrepo"
    for sub in ("chunks/tmp", "txn", "locks"):
        (mdir / sub).mkdir(parents=True, exist_ok=True)
    _write_format(mdir)
    repo = Repository(p)
    txn = repo.transaction()
    txn.commit("Initialize mrepo repository", allow_empty=True)
    txn.discard()
    return repo


def open_repo(path: str | os.PathLike[str] = ".", *, search_parents: bool = True) -> Repository:
    """Open the repository at ``path`` (or, with ``search_parents``, above it)."""
    p = Path(path)
    if not p.exists():
        raise NotARepository("no such directory", str(p))
    p = p.resolve()
    if p.name == ".git" and (p / "mrepo").is_dir():
        p = p.parent
    candidates = [p, *p.parents] if search_parents else [p]
    for c in candidates:
        fmt = c / ".git" / "mrepo" / "format.json"
        if fmt.exists():
            try:
                doc = json.loads(fmt.read_text())
                version = int(doc["version"])
            except (ValueError, KeyError, TypeError):
                raise CorruptObject("unreadable repository format file", str(fmt)) from None
            if version > FORMAT_VERSION:
                raise MrepoError(
                    f"repository format version {version} is newer than this mrepo supports ({FORMAT_VERSION}); upgrade mrepo",
                    str(c),
                )
            return Repository(c)
        if (c / ".git").exists() and not search_parents:
            raise NotARepository("a git repository, but not an mrepo repository", str(c))
    if (p / ".git").exists():
        raise NotARepository("a git repository, but not an mrepo repository", str(p))
    raise NotARepository("not an mrepo repository (or any of its parents)", str(p))
