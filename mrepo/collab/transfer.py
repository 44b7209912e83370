"""clone, fetch, push and prefetch: history and chunks together.

Order of operations (so that an interruption at any point leaves both sides
consistent, and a re-run transfers only what is still missing):

- **fetch**: history objects -> chunks the new commits use and this
  repository lacks (skipped in a lazy clone) -> remote-tracking refs.
- **push**: chunks the remote lacks -> history objects -> the remote ref,
  by compare-and-swap (a non-fast-forward is refused unless forced).

Chunks that arrived before an interruption stay (they are verified and
content-addressed); refs only ever point at complete states.
"""

from __future__ import annotations

import shutil
import stat
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dulwich.objects import Commit, Tag

from ..errors import ConflictError, InvalidInput, NotFound
from ..store.layout import DATA, MANIFEST
from ..store.manifest import decode_manifest
from ..store.refs import ANY
from .chunkremote import ChunkRemote, TransferStats, open_chunk_remote
from .history import HistoryRemote, open_history
from .remotes import Remote, add_remote, get_config, get_remote, set_config

__all__ = [
    "FetchResult",
    "PushResult",
    "clone",
    "fetch",
    "push",
    "prefetch",
    "prefetch_plan",
    "is_lazy",
    "read_chunks_from",
    "open_remote",
    "chunks_of_commits",
    "commits_between",
    "is_ancestor",
    "FETCHER_NAME",
]

FETCHER_NAME = "mrepo.collab.fetcher"
Progress = Callable[[int], None] | None


@dataclass
class FetchResult:
    remote: str
    updated: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # tracking ref -> (old, new)
    objects_fetched: bool = False
    chunks: TransferStats = field(default_factory=TransferStats)
    lazy: bool = False
    history: tuple[int, int] | None = None  # (git objects, their bytes) when known


@dataclass
class PushResult:
    remote: str
    ref: str
    old: str | None
    new: str
    up_to_date: bool = False
    chunks: TransferStats = field(default_factory=TransferStats)
    history: tuple[int, int] | None = None  # (git objects, their bytes) when known


def is_lazy(repo) -> bool:
    return get_config(repo, ("mrepo",), "fetcher") == FETCHER_NAME


def read_chunks_from(repo, remote: str) -> None:
    """Make ``repo`` read the chunks it lacks from ``remote``'s chunk URL (on
    first read, verified, cached): what a lazy clone does, and what a central
    repository served by a git server does with its object store."""
    get_remote(repo, remote)
    set_config(repo, ("mrepo", "lazy"), "remote", remote)
    set_config(repo, ("mrepo",), "fetcher", FETCHER_NAME)
    repo.chunks.set_fetcher(repo._configured_fetcher, deferred=True)


def open_remote(repo, name: str) -> tuple[Remote, HistoryRemote, ChunkRemote]:
    r = get_remote(repo, name)
    cache = Path(repo.mrepo_dir) / "remotes" / name / "idx"
    return r, open_history(r.url), open_chunk_remote(r.chunks, cache)


# ---------------------------------------------------------------------------
# graph helpers
# ---------------------------------------------------------------------------
def _peel(repo, sha: str) -> str | None:
    """The commit a ref value reaches (through tags), or None (not a commit / absent)."""
    try:
        obj = repo.objects.read(sha)
        while isinstance(obj, Tag):
            sha = obj.object[1].decode("ascii")
            obj = repo.objects.read(sha)
    except NotFound:
        return None
    return sha if isinstance(obj, Commit) else None


def ancestors(repo, tips: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    stack = [t for t in tips if t]
    while stack:
        sha = stack.pop()
        if sha in seen:
            continue
        try:
            c = repo.objects.commit(sha)
        except NotFound:
            continue
        seen.add(sha)
        stack.extend(p.decode("ascii") for p in c.parents)
    return seen


def commits_between(repo, tips: Iterable[str], exclude: Iterable[str]) -> list[str]:
    """Commits reachable from ``tips`` and not from ``exclude`` (those present locally)."""
    stop = ancestors(repo, exclude)
    out: list[str] = []
    seen: set[str] = set()
    stack = [t for t in tips if t]
    while stack:
        sha = stack.pop()
        if sha in seen or sha in stop:
            continue
        seen.add(sha)
        out.append(sha)
        stack.extend(p.decode("ascii") for p in repo.objects.commit(sha).parents)
    return out


def is_ancestor(repo, a: str, b: str) -> bool:
    """True when commit ``a`` is ``b`` or one of its ancestors."""
    if a == b:
        return True
    return a in ancestors(repo, [b])


def chunks_of_commits(repo, commits: Iterable[str], prefixes: tuple[str, ...] = ()) -> dict[str, int]:
    """digest -> size of every chunk the trees of ``commits`` use (under
    ``prefixes`` of the tree when given, e.g. ``data/species/A/``)."""
    out: dict[str, int] = {}
    seen_trees: set[str] = set()
    seen_manifests: set[str] = set()
    objs = repo.objects

    def wanted(path: str) -> bool:
        if not prefixes:
            return True
        return any(path.startswith(p) or p.startswith(path + "/") for p in prefixes)

    def walk(tree: str, path: str) -> None:
        if tree in seen_trees:
            return
        seen_trees.add(tree)
        for item in objs.tree(tree).iteritems():
            name = item.path.decode("utf-8", "surrogateescape")
            p = f"{path}/{name}" if path else name
            sha = item.sha.decode("ascii")
            if stat.S_ISDIR(item.mode):
                if wanted(p):
                    walk(sha, p)
            elif name == MANIFEST and p.startswith(DATA + "/") and sha not in seen_manifests:
                owner = p[: -len(MANIFEST) - 1]
                if prefixes and not any((owner + "/").startswith(x) or x.startswith(owner + "/") for x in prefixes):
                    continue
                seen_manifests.add(sha)
                for rel, ref in decode_manifest(objs.blob(sha), p).items():
                    if not prefixes or any(f"{owner}/{rel}".startswith(x) for x in prefixes):
                        out.setdefault(ref.digest, ref.size)

    for c in commits:
        walk(objs.commit(c).tree.decode("ascii"), "")
    return out


def _local_tips(repo) -> list[str]:
    """Commits whose chunks this repository has (or, lazy, is promised):
    branches, tags and remote-tracking branches; not mirrored requests,
    which bring history only."""
    tips = []
    for k, v in repo.refs.list("refs/").items():
        if k.startswith("refs/remotes/") and "/requests/" in k:
            continue
        c = _peel(repo, v)
        if c:
            tips.append(c)
    head = repo.head().commit
    if head:
        tips.append(head)
    return tips


def _missing_locally(repo, digests: Iterable[str]) -> list[str]:
    """Those of ``digests`` this repository has neither in a pack nor loose."""
    from .chunkremote import _threads

    return repo.chunks.missing(digests, threads=_threads())


def download_chunks(repo, cr: ChunkRemote, digests: Iterable[str], progress: Progress = None) -> TransferStats:
    """Fetch ``digests`` from ``cr`` into the repository's chunk store, as
    packs (each chunk verified on arrival; packs completed before an
    interruption stay, and a re-run skips their chunks)."""
    from .chunkremote import _pack_bytes

    want = list(digests)
    if not want:
        return TransferStats()
    with repo.chunks.pack_writer(_pack_bytes()) as writer:
        return cr.download(want, writer.add, progress)


# ---------------------------------------------------------------------------
# fetch / clone
# ---------------------------------------------------------------------------
def fetch(repo, remote: str = "origin", *, chunks: bool | None = None, progress: Progress = None) -> FetchResult:
    """Fetch the remote's branches into ``refs/remotes/<remote>/*``.

    ``chunks`` (default: unless the repository is a lazy clone) also fetches
    every chunk the new commits use that this repository lacks.
    """
    r, hist, cr = open_remote(repo, remote)
    lazy = is_lazy(repo)
    want_chunks = (not lazy) if chunks is None else chunks
    res = FetchResult(remote, lazy=lazy)
    refs = hist.refs()
    heads = {k: v for k, v in refs.items() if k.startswith("refs/heads/")}
    missing = [v for v in heads.values() if not repo.objects.exists(v)]
    if missing:
        res.history = hist.fetch(repo, missing)
        res.objects_fetched = True
    tips = {}
    for ref, sha in heads.items():
        c = _peel(repo, sha)
        if c is None:
            raise NotFound("a remote branch points to an object that is not a commit the remote sent", f"{ref} {sha[:12]}")
        tips[ref] = c
    if want_chunks:
        new = commits_between(repo, tips.values(), _local_tips(repo))
        need = chunks_of_commits(repo, new)
        todo = _missing_locally(repo, need)
        res.chunks = download_chunks(repo, cr, todo, progress)
        res.chunks.skipped = len(need) - len(todo)
    for ref, sha in heads.items():
        tracking = r.tracking_prefix + ref[len("refs/heads/") :]
        old = repo.refs.read(tracking)
        if old != sha:
            repo.refs.set(tracking, sha, ANY, message=f"fetch {remote}", ident=repo.identity().encode())
            res.updated[tracking] = (old, sha)
    hb = hist.head_branch()
    if hb:
        set_config(repo, ("remote", remote), "mrepohead", hb)
    return res


def clone(
    url: str,
    directory: str | Path,
    *,
    lazy: bool = False,
    chunks: str | None = None,
    branch: str | None = None,
    remote: str = "origin",
    progress: Progress = None,
):
    """Clone the repository at ``url`` into ``directory``; returns the new Repository.

    ``lazy`` fetches history only; chunks are fetched on first read (and
    cached), or in bulk with :func:`prefetch`. On failure nothing is left.
    """
    from ..repository import init_repo

    d = Path(directory)
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise InvalidInput("destination exists and is not an empty directory", str(d))
    created = not d.exists()
    try:
        repo = init_repo(d)
        init_commit = repo.head().commit
        add_remote(repo, remote, url, chunks=chunks)
        if lazy:
            read_chunks_from(repo, remote)
        res = fetch(repo, remote, chunks=not lazy, progress=progress)
        tracking = {k[len(f"refs/remotes/{remote}/") :]: v for k, v in repo.refs.list(f"refs/remotes/{remote}/").items()}
        if not tracking:
            raise NotFound("the remote has no branches", url)
        hb = get_config(repo, ("remote", remote), "mrepohead")
        name = branch or (hb[len("refs/heads/") :] if hb and hb[len("refs/heads/") :] in tracking else None)
        name = name or ("main" if "main" in tracking else sorted(tracking)[0])
        if name not in tracking:
            raise NotFound("the remote has no such branch", name)
        repo.refs.set(f"refs/heads/{name}", tracking[name], ANY, message=f"clone: from {url}", ident=repo.identity().encode())
        repo.refs.set_head(branch=f"refs/heads/{name}")
        if name != "main" and repo.refs.read("refs/heads/main") == init_commit:
            repo.refs.delete("refs/heads/main")
        set_config(repo, ("branch", name), "remote", remote)
        set_config(repo, ("branch", name), "merge", f"refs/heads/{name}")
        repo.index  # noqa: B018  (re-bases the staging area on the new HEAD)
        repo._clone_result = res  # for callers that report what moved
        return repo
    except BaseException:
        if created:
            shutil.rmtree(d, ignore_errors=True)
        else:
            for p in list(d.iterdir()):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# push
# ---------------------------------------------------------------------------
def push(
    repo,
    remote: str = "origin",
    branch: str | None = None,
    *,
    dest: str | None = None,
    force: bool = False,
    rev: str | None = None,
    progress: Progress = None,
) -> PushResult:
    """Push ``branch`` (default: the current one) to the same branch of ``remote``.

    Chunks the remote lacks go first (in packs), then history, then the ref
    (compare-and-swap; refused unless it is a fast-forward or ``force``).
    ``dest``/``rev`` push any commit to any ref (used by requests).
    """
    r, hist, cr = open_remote(repo, remote)
    if rev is None:
        b = branch or repo.head().branch
        if not b:
            raise InvalidInput("HEAD is detached; name the branch to push")
        sha = repo.refs.read(f"refs/heads/{b}")
        if sha is None:
            raise NotFound("no such branch", b)
        dest = dest or f"refs/heads/{b}"
    else:
        sha = repo.resolve(rev) if not repo.objects.exists(rev) else rev
        b = None
        if dest is None:
            raise InvalidInput("push of a revision needs a destination ref")
    refs = hist.refs()
    old = refs.get(dest)
    res = PushResult(remote, dest, old, sha)
    if old == sha:
        res.up_to_date = True
        return res
    commit = _peel(repo, sha) or sha
    if old and not force:
        old_c = _peel(repo, old)
        if old_c is None:
            raise ConflictError("the remote has commits this repository lacks; run `mrepo pull` first", dest)
        if not is_ancestor(repo, old_c, commit):
            raise ConflictError("non-fast-forward: the remote branch has diverged; run `mrepo pull` (fetch and merge) first", dest)
    known = [c for c in (_peel(repo, v) for v in refs.values()) if c]
    new_commits = commits_between(repo, [commit], known)
    need = chunks_of_commits(repo, new_commits)
    have = cr.available(need)
    lacking = {d: s for d, s in need.items() if d not in have}
    res.chunks = cr.upload(repo.chunks, lacking, progress)
    res.chunks.skipped = len(need) - len(lacking)
    res.history = hist.push(repo, {dest: (old, sha)})
    if b is not None and dest.startswith("refs/heads/"):
        repo.refs.set(r.tracking_prefix + dest[len("refs/heads/") :], sha, ANY, message=f"push {remote}", ident=repo.identity().encode())
    return res


# ---------------------------------------------------------------------------
# lazy repositories
# ---------------------------------------------------------------------------
def prefetch_plan(
    repo,
    *,
    rev: str = "HEAD",
    species: Iterable[str] = (),
    sources: Iterable[str] = (),
    everything: bool = False,
) -> dict[str, int]:
    """digest -> size of the chunks :func:`prefetch` would bring (before
    skipping those already here); checks the names and ``rev``, moves nothing."""
    from ..store.layout import validate_name

    prefixes = []
    for s in species:
        validate_name(s, "species name")
        prefixes.append(f"{DATA}/species/{s}/")
    for s in sources:
        validate_name(s, "source name")
        prefixes.append(f"{DATA}/sources/{s}/")
    if not prefixes and not everything:
        raise InvalidInput("name --species, --source or --all to prefetch")
    sha = repo.resolve(rev)
    if not everything:
        snap = repo.snapshot_of(sha)
        for p in prefixes:
            if snap.tree_id(p.rstrip("/")) is None:
                raise NotFound("nothing of that name in this revision", f"{rev}:{p[len(DATA) + 1 :].rstrip('/')}")
    return chunks_of_commits(repo, [sha], () if everything else tuple(prefixes))


def prefetch(
    repo,
    *,
    rev: str = "HEAD",
    species: Iterable[str] = (),
    sources: Iterable[str] = (),
    everything: bool = False,
    remote: str | None = None,
    progress: Progress = None,
) -> TransferStats:
    """Fetch, in packs, the chunks of some species/sources (or all) at ``rev``
    that this repository lacks."""
    need = prefetch_plan(repo, rev=rev, species=species, sources=sources, everything=everything)
    name = remote or get_config(repo, ("mrepo", "lazy"), "remote") or "origin"
    _, _, cr = open_remote(repo, name)
    todo = _missing_locally(repo, need)
    stats = download_chunks(repo, cr, todo, progress)
    stats.skipped = len(need) - len(todo)
    return stats


def echo_progress(total: int, desc: str):
    """A tqdm progress bar on stderr (bytes), or None when ``total`` is small."""
    from tqdm import tqdm

    if total < (64 << 20):
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr)
