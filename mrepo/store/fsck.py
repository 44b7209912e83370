"""Integrity check: recompute every digest reachable from every ref."""

from __future__ import annotations

import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dulwich.objects import Commit, Tag

from ..errors import CorruptObject, MrepoError, NotFound
from .chunks import _io_threads
from .layout import DATA, MANIFEST
from .manifest import decode_manifest

__all__ = ["FsckProblem", "FsckReport", "fsck"]


@dataclass(frozen=True)
class FsckProblem:
    kind: str  # "missing" | "corrupt"
    object: str  # the object id or ref name
    where: str  # how it is reached: ref, commit, path
    message: str

    def __str__(self) -> str:
        return f"{self.kind} {self.object}: {self.message} ({self.where})"


@dataclass
class FsckReport:
    refs: int = 0
    commits: int = 0
    trees: int = 0
    blobs: int = 0
    chunks: int = 0
    chunk_bytes: int = 0
    promised_chunks: int = 0  # lazy repositories: absent here, available from the fetcher
    problems: list[FsckProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def fsck(repo, *, progress: Callable[[int], None] | None = None, fetch_missing: bool = False) -> FsckReport:
    """Verify refs, commits, trees, blobs (SHA-1) and chunks (BLAKE3, size),
    loose or packed, and the indexes of the chunk store's packs.

    In a repository with a chunk fetcher (a lazy clone), a chunk that is
    absent here but promised by the fetcher is counted in
    ``promised_chunks``, not reported; with ``fetch_missing`` it is fetched
    (verified, cached) and checked like any other.
    """
    rep = FsckReport()
    objs = repo.objects
    tips: list[tuple[str, str]] = []
    try:
        target, sha = repo.refs.read_head()
        if sha is not None:
            tips.append(("HEAD", sha))
        elif target is not None:
            # mrepo never leaves HEAD on an unborn branch (init commits, clone
            # checks out a fetched branch): a missing target is a damaged HEAD
            # (one flipped byte of "ref: refs/heads/main") or a deleted branch
            rep.problems.append(FsckProblem("missing", "HEAD", "HEAD", f"HEAD names branch {target}, which does not exist"))
    except MrepoError as e:
        rep.problems.append(FsckProblem("corrupt", "HEAD", "HEAD", e.message))
    try:
        refs = repo.refs.list("refs/")
    except MrepoError as e:
        rep.problems.append(FsckProblem("corrupt", e.obj or "refs", "refs", e.message))
        refs = {}
        import os

        for dirpath, _d, files in os.walk(repo.gitdir / "refs"):
            for f in files:
                name = (repo.gitdir / dirpath / f).relative_to(repo.gitdir).as_posix()
                try:
                    s = repo.refs.read(name)
                    if s:
                        refs[name] = s
                except MrepoError as e2:
                    if (e2.obj or name) != (e.obj or "refs"):
                        rep.problems.append(FsckProblem("corrupt", name, name, e2.message))
    rep.refs = len(refs)
    tips.extend(refs.items())

    seen: set[str] = set()
    chunk_where: dict[str, tuple[int, str]] = {}

    def problem(e: MrepoError, sha: str, where: str) -> None:
        kind = "missing" if isinstance(e, NotFound) else "corrupt"
        rep.problems.append(FsckProblem(kind, sha, where, e.message))

    def walk_tree(sha: str, path: str, where: str) -> None:
        if sha in seen:
            return
        seen.add(sha)
        try:
            tree = objs.tree(sha)
        except MrepoError as e:
            problem(e, sha, f"{where}:{path or '/'}")
            return
        rep.trees += 1
        for item in tree.iteritems():
            name = item.path.decode("utf-8", "surrogateescape")
            child = item.sha.decode("ascii")
            p = f"{path}/{name}" if path else name
            if stat.S_ISDIR(item.mode):
                walk_tree(child, p, where)
                continue
            if child in seen:
                continue
            seen.add(child)
            try:
                data = objs.blob(child)
            except MrepoError as e:
                problem(e, child, f"{where}:{p}")
                continue
            rep.blobs += 1
            if name == MANIFEST and p.startswith(DATA + "/"):
                try:
                    m = decode_manifest(data, p)
                except CorruptObject as e:
                    problem(e, child, f"{where}:{p}")
                    continue
                owner = p[: -len(MANIFEST) - 1]
                for rel, ref in m.items():
                    chunk_where.setdefault(ref.digest, (ref.size, f"{where}:{owner}/{rel}"))

    stack = [(sha, name) for name, sha in tips]
    while stack:
        sha, where = stack.pop()
        if sha in seen:
            continue
        seen.add(sha)
        try:
            obj = objs.read(sha)
        except MrepoError as e:
            problem(e, sha, where)
            continue
        if isinstance(obj, Tag):
            stack.append((obj.object[1].decode("ascii"), where))
            continue
        if not isinstance(obj, Commit):
            rep.problems.append(FsckProblem("corrupt", sha, where, "ref does not point to a commit"))
            continue
        rep.commits += 1
        short = sha[:12]
        walk_tree(obj.tree.decode("ascii"), "", f"commit {short}")
        for p in obj.parents:
            stack.append((p.decode("ascii"), f"parent of {short}"))

    fetcher = repo.chunks.fetcher
    promised: set[str] = set()

    def check_chunk(item: tuple[str, tuple[int, str]]) -> FsckProblem | None:
        digest, (size, where) = item
        try:
            data = repo.chunks.get(digest, fetch=fetch_missing)
        except NotFound as e:
            if fetcher is not None and not fetch_missing:
                check = getattr(fetcher, "promised", None)
                if check is None or check(digest):
                    promised.add(digest)
                    return None
                return FsckProblem("missing", digest, where, "missing chunk, and the chunk fetcher does not have it")
            return FsckProblem("missing", digest, where, e.message)
        except MrepoError as e:
            return FsckProblem("missing" if isinstance(e, NotFound) else "corrupt", digest, where, e.message)
        if len(data) != size:
            return FsckProblem("corrupt", digest, where, f"chunk has {len(data)} bytes, manifest says {size}")
        return None

    with ThreadPoolExecutor(max_workers=_io_threads()) as pool:
        for (digest, (size, _)), res in zip(chunk_where.items(), pool.map(check_chunk, chunk_where.items())):
            rep.chunks += 1
            rep.chunk_bytes += size
            if res is not None:
                rep.problems.append(res)
            if progress:
                progress(size)
    rep.promised_chunks = len(promised)
    # packs of the chunk store: a damaged index, or a pack missing or cut short
    for kind, obj, message in repo.chunks.pack_problems():
        rep.problems.append(FsckProblem(kind, obj, "chunk store", message))
    return rep
