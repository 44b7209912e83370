"""CLI commands: sharing populations (clone, remote, fetch, pull, push, merge, request)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import InvalidInput
from . import _repo, human_bytes, main


def _stats(s) -> str:
    text = f"{s.chunks} chunks ({human_bytes(s.bytes)})"
    if s.packs:
        text += f" in {s.packs} packs"
    if s.skipped:
        text += f", {s.skipped} already there"
    return text


def _bar(desc: str):
    from tqdm import tqdm

    return tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr, disable=None, leave=False)


@main.command()
@click.argument("url")
@click.argument("directory", required=False)
@click.option("--lazy", is_flag=True, help="Fetch history only; chunks come on first read (and are cached).")
@click.option("--chunks", "chunk_url", metavar="URL", help="Chunk URL beside a git:// remote: s3://bucket/prefix or a path.")
@click.option("-b", "--branch", help="Branch to check out (default: the remote's HEAD).")
@click.pass_context
def clone(ctx: click.Context, url: str, directory: str | None, lazy: bool, chunk_url: str | None, branch: str | None) -> None:
    """Clone the population at URL (a path or git://) into DIRECTORY."""
    from ..collab import clone as do_clone

    if directory is None:
        directory = Path(url.rstrip("/")).name.removesuffix(".git") or "population"
    bar = _bar("receiving")
    try:
        repo = do_clone(url, Path(ctx.obj["dir"]) / directory, lazy=lazy, chunks=chunk_url, branch=branch, progress=bar.update)
    finally:
        bar.close()
    res = repo._clone_result
    h = repo.head()
    what = "history only (lazy)" if lazy else _stats(res.chunks)
    click.echo(f"cloned {url} into {repo.path}: branch {h.branch} at {(h.commit or '')[:12]}, {what}")


@main.group()
def remote() -> None:
    """Manage remotes (where populations are shared)."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--chunks", "chunk_url", metavar="URL", help="Chunk URL: s3://bucket/prefix or a path (required beside git://).")
@click.pass_context
def remote_add(ctx: click.Context, name: str, url: str, chunk_url: str | None) -> None:
    """Add remote NAME at URL (a path or git://host:port/repo)."""
    from ..collab import add_remote

    r = add_remote(_repo(ctx), name, url, chunks=chunk_url)
    click.echo(f"added remote {r.name}: {r.url} (chunks: {r.chunks.url if r.chunks.kind != 'repo' else 'its chunk store'})")


@remote.command("remove")
@click.argument("name")
@click.pass_context
def remote_remove(ctx: click.Context, name: str) -> None:
    """Remove remote NAME and its remote-tracking refs."""
    from ..collab import remove_remote

    remove_remote(_repo(ctx), name)
    click.echo(f"removed remote {name}")


@remote.command("read-chunks")
@click.argument("name")
@click.pass_context
def remote_read_chunks(ctx: click.Context, name: str) -> None:
    """Read missing chunks from remote NAME's chunk URL on first use (lazily, verified, cached).

    A central repository served by a git server, whose chunks live in an
    object store, uses this to read its own population."""
    from ..collab import read_chunks_from

    read_chunks_from(_repo(ctx), name)
    click.echo(f"missing chunks will be read from remote {name}")


@remote.command("list")
@click.pass_context
def remote_list(ctx: click.Context) -> None:
    """List remotes."""
    from ..collab import list_remotes

    for r in list_remotes(_repo(ctx)):
        click.echo(f"{r.name}\t{r.url}\tchunks: {r.chunks.url if r.chunks.kind != 'repo' else '(its chunk store)'}")


@main.command()
@click.argument("remote_name", default="origin", metavar="[REMOTE]")
@click.option("--species", multiple=True, metavar="NAME", help="Prefetch the chunks of a species (lazy clones).")
@click.option("--source", multiple=True, metavar="NAME", help="Prefetch the chunks of a data source (lazy clones).")
@click.option("--all", "everything", is_flag=True, help="Prefetch every chunk of REV (lazy clones).")
@click.option("--rev", default="HEAD", show_default=True, help="Revision whose chunks --species/--source/--all prefetch.")
@click.pass_context
def fetch(ctx: click.Context, remote_name: str, species: tuple[str, ...], source: tuple[str, ...], everything: bool, rev: str) -> None:
    """Fetch REMOTE's branches (and, unless lazy, their chunks); prefetch part of a population."""
    from ..collab import fetch as do_fetch
    from ..collab import prefetch
    from ..collab.transfer import prefetch_plan
    from ..errors import NotFound

    repo = _repo(ctx)
    if species or source or everything:
        # bad names or revision: one error, before anything moves (unless REV
        # is a ref of this remote, which the fetch itself may bring)
        try:
            prefetch_plan(repo, rev=rev, species=species, sources=source, everything=everything)
        except NotFound:
            if not rev.startswith((f"{remote_name}/", f"refs/remotes/{remote_name}/")):
                raise
    bar = _bar("receiving")
    try:
        res = do_fetch(repo, remote_name, progress=bar.update)
        for ref, (old, new) in res.updated.items():
            click.echo(f"{ref}: {(old or 'new')[:12]} -> {new[:12]}")
        if not res.updated:
            click.echo(f"{remote_name}: up to date")
        if not res.lazy:
            click.echo(f"received {_stats(res.chunks)}")
        if species or source or everything:
            st = prefetch(repo, rev=rev, species=species, sources=source, everything=everything, progress=bar.update)
            click.echo(f"prefetched {_stats(st)}")
    finally:
        bar.close()


@main.command()
@click.argument("remote_name", default="origin", metavar="[REMOTE]")
@click.argument("branch", required=False)
@click.option("--ours", multiple=True, metavar="OBJECT", help="On conflict keep our side of OBJECT (or 'all').")
@click.option("--theirs", multiple=True, metavar="OBJECT", help="On conflict take their side of OBJECT (or 'all').")
@click.pass_context
def pull(ctx: click.Context, remote_name: str, branch: str | None, ours: tuple[str, ...], theirs: tuple[str, ...]) -> None:
    """Fetch REMOTE and merge its BRANCH (default: the current branch's name)."""
    from ..collab import pull as do_pull

    repo = _repo(ctx)
    fres, mres = _run_merge(lambda res: do_pull(repo, remote_name, branch, resolutions=res), ours, theirs)
    if not fres.lazy:
        click.echo(f"received {_stats(fres.chunks)}")
    _print_merge(mres)


@main.command()
@click.argument("remote_name", default="origin", metavar="[REMOTE]")
@click.argument("branch", required=False)
@click.option("-f", "--force", is_flag=True, help="Allow a non-fast-forward update of the remote branch.")
@click.pass_context
def push(ctx: click.Context, remote_name: str, branch: str | None, force: bool) -> None:
    """Push BRANCH (default: the current one) to REMOTE: chunks it lacks, then history, then the ref."""
    from ..collab import push as do_push

    repo = _repo(ctx)
    bar = _bar("sending")
    try:
        res = do_push(repo, remote_name, branch, force=force, progress=bar.update)
    finally:
        bar.close()
    if res.up_to_date:
        click.echo(f"{remote_name} {res.ref}: up to date")
        return
    click.echo(f"{remote_name} {res.ref}: {(res.old or 'new')[:12]} -> {res.new[:12]}; sent {_stats(res.chunks)}")


def _resolutions(ours: tuple[str, ...], theirs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for side, objs in (("ours", ours), ("theirs", theirs)):
        for o in objs:
            if o in out and out[o] != side:
                raise InvalidInput("an object cannot be resolved both ways", o)
            out[o] = side
    return out


def _run_merge(fn, ours, theirs):
    from ..collab import MergeConflict

    try:
        return fn(_resolutions(ours, theirs))
    except MergeConflict as e:
        for c in e.conflicts:
            click.echo(f"conflict: {c}", err=True)
        raise


def _print_merge(res) -> None:
    if res.up_to_date:
        click.echo("already up to date")
    elif res.fast_forward:
        click.echo(f"fast-forward to {res.commit[:12]}")
    else:
        for o in res.taken:
            click.echo(f"  merged: {o}")
        for o, side in res.resolved.items():
            click.echo(f"  resolved: {o} ({side})")
        click.echo(f"merge commit {res.commit[:12]} (parents: ours and {res.theirs[:12]})")


@main.command()
@click.argument("rev", required=False)
@click.option("--ours", multiple=True, metavar="OBJECT", help="Keep our side of a conflicting OBJECT (species/NAME, item/SRC/ITEM) or 'all'.")
@click.option("--theirs", multiple=True, metavar="OBJECT", help="Take their side of a conflicting OBJECT or 'all'.")
@click.option("--abort", is_flag=True, help="Forget the pending merge.")
@click.option("-m", "--message", help="Merge commit message.")
@click.pass_context
def merge(ctx: click.Context, rev: str | None, ours: tuple[str, ...], theirs: tuple[str, ...], abort: bool, message: str | None) -> None:
    """Three-way merge of REV into the current branch (or continue the pending merge)."""
    from ..collab import abort_merge
    from ..collab import merge as do_merge

    repo = _repo(ctx)
    if abort:
        click.echo("merge aborted" if abort_merge(repo) else "no merge in progress")
        return
    res = _run_merge(lambda r: do_merge(repo, rev, resolutions=r, message=message), ours, theirs)
    _print_merge(res)


@main.group()
def request() -> None:
    """Species contributions as requests to a central population."""


@request.command("create")
@click.option("--species", "species", multiple=True, required=True, metavar="NAME", help="Species the request contributes.")
@click.option("--to", "to", default="origin", show_default=True, metavar="REMOTE")
@click.option("-m", "--message", help="Title of the request.")
@click.pass_context
def request_create(ctx: click.Context, species: tuple[str, ...], to: str, message: str | None) -> None:
    """Push HEAD as a request contributing SPECIES to REMOTE."""
    from ..collab import create_request

    req = create_request(_repo(ctx), list(species), to=to, message=message)
    click.echo(f"created request {req.number} on {to}: {req.title} ({req.commit[:12]})")


@request.command("list")
@click.option("--from", "remote_name", metavar="REMOTE", help="Remote to list (default: this repository's own, else origin).")
@click.pass_context
def request_list(ctx: click.Context, remote_name: str | None) -> None:
    """List requests."""
    from ..collab import list_requests

    reqs = list_requests(_repo(ctx), remote_name)
    if not reqs:
        click.echo("no requests")
    for r in reqs:
        state = "merged" if r.merged else "open"
        click.echo(f"#{r.number:<4} {state:<7} {r.commit[:12]}  species {', '.join(r.species)}  {r.title}  ({r.author})")


def _print_check(chk) -> None:
    for rep in chk.reports:
        against = ", ".join(f"{k} < {v:.0f} Å" for k, v in rep.against.items()) or "no other species"
        click.echo(f"species {rep.species}: {rep.colliding} of {rep.total} particles collide ({rep.pairs} pairs; {against})")
        for c in rep.per_item:
            if c.colliding:
                click.echo(f"  item {c.item}: {c.colliding} of {c.new} collide")
    if chk.png:
        click.echo(f"overview: {chk.png}")


@request.command("check")
@click.argument("number")
@click.option("--from", "remote_name", metavar="REMOTE")
@click.option("--png", type=click.Path(dir_okay=False), help="Write a PNG overview here.")
@click.pass_context
def request_check(ctx: click.Context, number: str, remote_name: str | None, png: str | None) -> None:
    """Check request NUMBER for collisions with the species at HEAD."""
    from ..collab import check_request

    chk = check_request(_repo(ctx), number, remote=remote_name, png=png)
    click.echo(f"request {chk.request.number}: {chk.request.title}")
    _print_check(chk)


@request.command("merge")
@click.argument("number")
@click.option("--from", "remote_name", metavar="REMOTE")
@click.option("--drop-colliding", is_flag=True, help="Drop the new particles that collide (recorded in the commit).")
@click.option("--max-colliding", type=int, default=0, show_default=True, help="Refuse when more particles collide.")
@click.option("--ours", multiple=True, metavar="OBJECT")
@click.option("--theirs", multiple=True, metavar="OBJECT")
@click.option("--png", type=click.Path(dir_okay=False), help="Write a PNG overview of the check here.")
@click.pass_context
def request_merge(ctx: click.Context, number: str, remote_name: str | None, drop_colliding: bool, max_colliding: int,
                  ours: tuple[str, ...], theirs: tuple[str, ...], png: str | None) -> None:
    """Merge request NUMBER into the current branch (after a collision check)."""
    from ..collab import merge_request

    if max_colliding < 0:
        raise InvalidInput("--max-colliding must be >= 0", str(max_colliding))
    repo = _repo(ctx)
    res, chk = _run_merge(lambda r: merge_request(repo, number, remote=remote_name, drop_colliding=drop_colliding,
                                                  max_colliding=max_colliding, resolutions=r, png=png), ours, theirs)
    _print_check(chk)
    meta = repo.commit_info(res.commit).metadata if res.commit else {}
    for sp, d in (meta.get("dropped_colliding") or {}).items():
        click.echo(f"dropped {d['count']} colliding particles of species {sp}")
    _print_merge(res)
