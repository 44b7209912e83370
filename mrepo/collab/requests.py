"""Species contributions as requests ("pull-request style").

A contributor adds a species in their clone and runs
:func:`create_request`: the commit is pushed (chunks first) to
``refs/mrepo/requests/<N>`` on the central repository, through an annotated
tag whose message records the request (title, species, base commit,
author). A request may only change the species it names (relative to where
it forked from the central branch).

A maintainer lists requests (:func:`list_requests`), checks one for
physical collisions with the species already there (:func:`check_request`:
counts per item and a PNG overview) and merges it (:func:`merge_request`):
three-way when the request is based on an older main, refused when more
than ``max_colliding`` particles collide, or with the colliding new
particles dropped and recorded in the merge commit's metadata.

In the central repository itself requests are its own
``refs/mrepo/requests/<N>``; in a clone they are mirrored from the remote
to ``refs/remotes/<remote>/requests/<N>``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from dulwich.objects import Commit, Tag

from ..errors import ConflictError, CorruptObject, InvalidInput, NotFound
from ..store.refs import ANY
from .collisions import CollisionReport, find_collisions, plot_collisions
from .merge import DERIVED, MergeResult, _group, merge, merge_base
from .remotes import get_config, list_remotes
from .transfer import (
    _local_tips,
    chunks_of_commits,
    commits_between,
    download_chunks,
    fetch,
    is_ancestor,
    is_lazy,
    open_remote,
    push,
    _missing_locally,
)

__all__ = ["Request", "RequestCheck", "create_request", "list_requests", "get_request", "check_request", "merge_request"]

REQUEST_PREFIX = "refs/mrepo/requests/"
_N = re.compile(r"^[1-9][0-9]{0,8}$")


@dataclass
class Request:
    number: int
    ref: str  # local ref holding it
    tag: str  # tag object id
    commit: str
    title: str
    species: list[str]
    base: str | None
    author: str
    created: int
    merged: bool = False


@dataclass
class RequestCheck:
    request: Request
    target: str  # commit checked against
    reports: list[CollisionReport] = field(default_factory=list)
    png: Path | None = None

    @property
    def colliding(self) -> int:
        return sum(r.colliding for r in self.reports)

    @property
    def total(self) -> int:
        return sum(r.total for r in self.reports)


def _target_branch(repo, remote: str | None) -> str:
    if remote:
        hb = get_config(repo, ("remote", remote), "mrepohead")
        if hb:
            return hb[len("refs/heads/") :]
    return repo.head().branch or "main"


def _species_names(snap) -> set[str]:
    return set((snap.dir("docs/species") or {}).keys())


# ---------------------------------------------------------------------------
# create
# ---------------------------------------------------------------------------
def create_request(repo, species: list[str], *, to: str = "origin", message: str | None = None, rev: str = "HEAD") -> Request:
    """Push ``rev`` as a new request contributing ``species`` to remote ``to``."""
    if not species:
        raise InvalidInput("name the species the request contributes (--species NAME)")
    sha = repo.resolve(rev)
    snap = repo.snapshot_of(sha)
    have = _species_names(snap)
    for s in species:
        if s not in have:
            raise NotFound("no such species in this revision", f"{rev}:species/{s}")
    fetch(repo, to)
    branch = _target_branch(repo, to)
    upstream = repo.refs.read(f"refs/remotes/{to}/{branch}")
    base = merge_base(repo, sha, upstream) if upstream else None
    sb = repo.snapshot_of(base)
    from ..store.diff import changed_keys

    objs = set(_group(changed_keys(sb, snap), (snap, sb)))
    allowed = {f"species {s}" for s in species} | {DERIVED}
    other = sorted(objs - allowed)
    if other:
        raise InvalidInput(
            "the request would also change " + ", ".join(other[:4]) + ("..." if len(other) > 4 else "")
            + "; a request contributes only the species it names",
            rev,
        )
    if not (objs & {f"species {s}" for s in species}):
        raise InvalidInput("the named species are unchanged since the remote branch; nothing to request", ", ".join(species))
    _, hist, _ = open_remote(repo, to)
    info = {
        "title": (message or f"Contribute species {', '.join(species)}").splitlines()[0],
        "species": list(species),
        "base": base,
        "branch": branch,
        "author": repo.identity(),
        "created": int(time.time()),
    }
    for _attempt in range(5):
        existing = [int(k[len(REQUEST_PREFIX) :]) for k in hist.refs() if k.startswith(REQUEST_PREFIX) and _N.match(k[len(REQUEST_PREFIX) :])]
        n = max(existing, default=0) + 1
        t = Tag()
        t.object = (Commit, sha.encode("ascii"))
        t.name = f"request-{n}".encode()
        t.tagger = repo.identity().encode("utf-8")
        t.tag_time = info["created"]
        t.tag_timezone = 0
        t.message = (info["title"] + "\n\nmrepo-request: " + json.dumps(info, sort_keys=True) + "\n").encode("utf-8")
        tag_id = repo.objects.write(t)
        repo.objects.sync()
        try:
            push(repo, to, rev=tag_id, dest=f"{REQUEST_PREFIX}{n}")
        except ConflictError:
            hist = open_remote(repo, to)[1]
            continue
        repo.refs.set(f"refs/remotes/{to}/requests/{n}", tag_id, ANY, message="request create", ident=repo.identity().encode())
        return _parse(repo, n, f"refs/remotes/{to}/requests/{n}", tag_id, upstream)
    raise ConflictError("could not allocate a request number (others were creating requests); try again", to)


# ---------------------------------------------------------------------------
# list / get
# ---------------------------------------------------------------------------
def _parse(repo, n: int, ref: str, tag_id: str, target: str | None) -> Request:
    obj = repo.objects.read(tag_id)
    if not isinstance(obj, Tag):
        raise CorruptObject("a request ref must point to an annotated request tag", ref)
    text = obj.message.decode("utf-8", "replace")
    m = re.search(r"^mrepo-request: (\{.*\})$", text, re.M)
    if not m:
        raise CorruptObject("request tag without its mrepo-request record", ref)
    try:
        info = json.loads(m.group(1))
    except json.JSONDecodeError:
        raise CorruptObject("unreadable request record", ref) from None
    commit = obj.object[1].decode("ascii")
    merged = bool(target) and repo.objects.exists(commit) and is_ancestor(repo, commit, target)
    return Request(n, ref, tag_id, commit, info.get("title", ""), list(info.get("species", [])), info.get("base"),
                   info.get("author", ""), int(info.get("created", 0)), merged)


def _default_remote(repo, remote: str | None) -> str | None:
    if remote:
        return remote
    if repo.refs.list(REQUEST_PREFIX):
        return None  # the central repository itself
    names = [r.name for r in list_remotes(repo)]
    if "origin" in names:
        return "origin"
    return names[0] if len(names) == 1 else None


def _sync_requests(repo, remote: str) -> tuple[dict[int, str], str | None]:
    """Mirror the remote's request refs (history only) into
    refs/remotes/<remote>/requests/; returns them and the commit of the
    remote's target branch (history fetched, no ref moved), against which
    "merged" is judged."""
    _, hist, _ = open_remote(repo, remote)
    all_refs = hist.refs()
    refs = {k: v for k, v in all_refs.items() if k.startswith(REQUEST_PREFIX) and _N.match(k[len(REQUEST_PREFIX) :])}
    hb = hist.head_branch() or f"refs/heads/{_target_branch(repo, remote)}"
    target = all_refs.get(hb)
    missing = [v for v in [*refs.values(), target] if v and not repo.objects.exists(v)]
    if missing:
        hist.fetch(repo, missing)
    out = {}
    for k, v in refs.items():
        n = int(k[len(REQUEST_PREFIX) :])
        local = f"refs/remotes/{remote}/requests/{n}"
        if repo.refs.read(local) != v:
            repo.refs.set(local, v, ANY, message=f"fetch {remote} requests", ident=repo.identity().encode())
        out[n] = local
    return out, target


def list_requests(repo, remote: str | None = None) -> list[Request]:
    remote = _default_remote(repo, remote)
    if remote is None:
        refs = {int(k[len(REQUEST_PREFIX) :]): k for k in repo.refs.list(REQUEST_PREFIX) if _N.match(k[len(REQUEST_PREFIX) :])}
        target = repo.head().commit
    else:
        refs, target = _sync_requests(repo, remote)
    return [_parse(repo, n, ref, repo.refs.read(ref), target) for n, ref in sorted(refs.items())]


def get_request(repo, n: int | str, remote: str | None = None) -> Request:
    s = str(n)
    if not _N.match(s):
        raise InvalidInput("a request number is a positive integer", s)
    remote = _default_remote(repo, remote)
    if remote is None:
        ref = f"{REQUEST_PREFIX}{s}"
    else:
        refs, _ = _sync_requests(repo, remote)
        ref = refs.get(int(s))
    sha = repo.refs.read(ref) if ref else None
    if sha is None:
        raise NotFound("no such request", f"request {s}")
    # merged into the branch it would be merged into here: the current one
    return _parse(repo, int(s), ref, sha, repo.head().commit)


# ---------------------------------------------------------------------------
# check / merge
# ---------------------------------------------------------------------------
def _ensure_chunks(repo, commit: str, remote: str | None) -> None:
    """Bring the chunks of the request's new commits (not in a lazy clone)."""
    if remote is None or is_lazy(repo):
        return
    new = commits_between(repo, [commit], _local_tips(repo))
    need = chunks_of_commits(repo, new)
    todo = _missing_locally(repo, need)
    if todo:
        _, _, cr = open_remote(repo, remote)
        download_chunks(repo, cr, todo)


def _labels(pop) -> dict[str, str]:
    return {it.data_digest: f"{src.name}/{it.name}" for src, it in pop.items()}


def check_request(repo, n: int | str, *, remote: str | None = None, against: str = "HEAD", png: str | Path | None = None) -> RequestCheck:
    """Collisions between the request's species and the other species at ``against``."""
    from ..model.population import read_population, read_species

    req = get_request(repo, n, remote)
    _ensure_chunks(repo, req.commit, _default_remote(repo, remote))
    target = repo.resolve(against)
    tsnap = repo.snapshot_of(target)
    rsnap = repo.snapshot_of(req.commit)
    try:
        tpop = read_population(tsnap, grids=False)
    except NotFound:
        raise NotFound("the target revision holds no population", against) from None
    rpop = read_population(rsnap, grids=False)
    labels = {**_labels(rpop), **_labels(tpop)}
    existing = [read_species(tsnap, s, lazy=False) for s in tpop.species]
    out = RequestCheck(req, target)
    news = []
    for s in req.species:
        new = read_species(rsnap, s, lazy=False)
        news.append(new)
        out.reports.append(find_collisions(new, existing, labels))
    if png is not None and out.reports:
        out.png = plot_collisions(out.reports[0], news[0], existing, png, labels)
    return out


def merge_request(
    repo,
    n: int | str,
    *,
    remote: str | None = None,
    drop_colliding: bool = False,
    max_colliding: int = 0,
    resolutions: dict[str, str] | None = None,
    png: str | Path | None = None,
) -> tuple[MergeResult, RequestCheck]:
    """Merge request ``n`` into the current branch after a collision check.

    Refused (nothing changes) when more than ``max_colliding`` particles of
    the request collide, unless ``drop_colliding``: then the colliding new
    particles are removed in the merge commit, whose metadata records them.
    """
    from ..model.population import read_species, write_species

    chk = check_request(repo, n, remote=remote, png=png)
    req = chk.request
    if req.merged:
        raise InvalidInput("request already merged", f"request {req.number}")
    if chk.colliding > max_colliding and not drop_colliding:
        worst = max(chk.reports, key=lambda r: r.colliding)
        raise ConflictError(
            f"{chk.colliding} particles of the request collide with existing particles "
            f"(species {worst.species}: {worst.colliding} of {worst.total}; at most {max_colliding} allowed); "
            "use --drop-colliding or raise --max-colliding",
            f"request {req.number}",
        )
    dropped: dict[str, Any] = {}

    def drop(txn) -> dict[str, Any]:
        for rep in chk.reports:
            if not rep.colliding:
                continue
            sp = read_species(txn, rep.species, lazy=False)
            if len(sp.particles) != rep.total:
                raise ConflictError("the species changed since it was checked; check again", f"species {rep.species}")
            keep = np.ones(rep.total, bool)
            keep[rep.colliding_index] = False
            sp.particles = sp.particles.select(keep)
            write_species(txn, sp)
            dropped[rep.species] = {
                "count": rep.colliding,
                "per_item": {c.item: c.colliding for c in rep.per_item if c.colliding},
                "particle_indices": rep.colliding_index.tolist(),
            }
        return {"dropped_colliding": dropped} if dropped else {}

    meta = {
        "operation": "request-merge",
        "request": req.number,
        "request_tag": req.tag,
        "species": req.species,
        "collisions": [r.as_dict() for r in chk.reports],
    }
    res = merge(
        repo,
        req.commit,
        message=f"Merge request {req.number}: {req.title}",
        metadata=meta,
        resolutions=resolutions,
        before_commit=drop if drop_colliding and chk.colliding else None,
        allow_fast_forward=False,
    )
    return res, chk
