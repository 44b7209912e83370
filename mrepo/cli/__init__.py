"""The ``mrepo`` command line. It only composes: every command calls one
function of :mod:`mrepo.porcelain` or of the repository and prints its result.

Errors print one line, ``error: <what> (<which object>)``, and exit 1
(tracebacks only with ``--debug``).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..errors import InvalidInput, MrepoError

_DEBUG = False


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _fmt_time(ts: int, tz: int) -> str:
    t = _dt.datetime.fromtimestamp(ts, _dt.timezone(_dt.timedelta(seconds=tz)))
    return t.strftime("%a %b %d %H:%M:%S %Y %z")


def _quiet_teardown() -> None:
    """After an error was reported in one line, keep interpreter teardown
    quiet: zarr's abandoned concurrent reads would otherwise print
    'Exception ignored' notes at exit."""
    sys.unraisablehook = lambda _unraisable: None


class MrepoGroup(click.Group):
    """Turns mrepo errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MrepoError as e:
            if _DEBUG:
                raise
            click.echo(f"error: {e}", err=True)
            _quiet_teardown()
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("error: interrupted; nothing was committed", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:
            # the reader went away (`mrepo log | head`): stop quietly, as git does
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(141)
        except OSError as e:
            if _DEBUG:
                raise
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            click.echo(f"error: {e.strerror or e}{where}", err=True)
            ctx.exit(1)


def _repo(ctx: click.Context):
    from ..repository import open_repo

    return open_repo(ctx.obj["dir"])


@click.group(cls=MrepoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "directory", default=".", metavar="DIR", help="Run as if started in DIR.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="mrepo")
@click.pass_context
def main(ctx: click.Context, directory: str, debug: bool) -> None:
    """mrepo: cryo-EM populations in a content-addressed, git-readable repository."""
    global _DEBUG
    _DEBUG = debug
    if not debug:
        import logging

        # zarr reads chunks in concurrent tasks; after one fails (and we report
        # it), asyncio would log the abandoned siblings at exit
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if directory != ".":
        try:
            os.chdir(directory)
        except OSError as e:
            click.echo(f"error: cannot change to directory: {e.strerror} ({directory})", err=True)
            ctx.exit(1)
    ctx.obj = {"dir": "."}


# ---------------------------------------------------------------------------
# repository basics
# ---------------------------------------------------------------------------
@main.command()
@click.argument("directory", default=".")
@click.pass_context
def init(ctx: click.Context, directory: str) -> None:
    """Create a repository in DIRECTORY (a git repository stock git can read)."""
    from ..repository import init_repo

    d = Path(ctx.obj["dir"]) / directory
    repo = init_repo(d)
    click.echo(f"Initialized empty mrepo repository in {repo.path}")


def _parse_chunks(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        out = tuple(int(x) for x in re.split(r"[x,]", text) if x)
    except ValueError:
        raise InvalidInput("--chunks wants integers like 8,512,512", text) from None
    if not out or any(v <= 0 for v in out):
        raise InvalidInput("--chunks wants positive integers", text)
    return out


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--as", "name", metavar="NAME", help="Name to store the (single) file under; may contain '/'.")
@click.option("--chunks", metavar="Z,Y,X", help="Chunk shape (default: about 4 MiB per chunk).")
@click.pass_context
def add(ctx: click.Context, paths: tuple[str, ...], name: str | None, chunks: str | None) -> None:
    """Stage MRC/MRCS/MAP, TIFF and .npy files as arrays (JSON/TOML/text as documents)."""
    from tqdm import tqdm

    from .. import porcelain

    repo = _repo(ctx)
    total = 0
    for p in paths:
        try:
            total += os.path.getsize(p)
        except OSError:
            pass
    # a progress bar for big inputs, on terminals only (disable=None: auto)
    quiet = True if total < (64 << 20) else None
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="adding", disable=quiet, file=sys.stderr)
    try:
        results = porcelain.add(repo, paths, name=name, chunks=_parse_chunks(chunks), progress=bar.update)
    finally:
        bar.close()
    for r in results:
        if r.info is not None:
            i = r.info
            vs = i.attributes.get("voxel_size")
            px = f", {vs[-1]:.4g} Å/px" if vs and vs[-1] else ""
            click.echo(
                f"added array {r.name}: {'x'.join(map(str, i.shape))} {i.dtype}{px}, "
                f"{i.n_chunks} chunks ({human_bytes(i.stored_bytes)}) from {r.path}"
            )
            for n in r.notes:
                click.echo(f"  note: {n}")
        else:
            click.echo(f"added document {r.name} from {r.path}")


@main.command()
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Stage the removal of arrays or documents."""
    from .. import porcelain

    porcelain.remove(_repo(ctx), names)
    for n in names:
        click.echo(f"removed {n}")


@main.command()
@click.option("-m", "--message", required=True, help="Commit message.")
@click.option("--allow-empty", is_flag=True, help="Commit even if nothing changed.")
@click.pass_context
def commit(ctx: click.Context, message: str, allow_empty: bool) -> None:
    """Record the staged changes as a new commit."""
    from .. import porcelain

    repo = _repo(ctx)
    ci = porcelain.commit(repo, message, allow_empty=allow_empty)
    h = repo.head()
    click.echo(f"[{h.branch or 'detached HEAD'} {ci.id[:12]}] {ci.summary}")
    changes = repo.diff(ci.parents[0], ci.id) if ci.parents else []
    for c in changes:
        click.echo("  " + _fmt_change(c))


@main.command()
@click.pass_context
def reset(ctx: click.Context) -> None:
    """Drop every staged change."""
    repo = _repo(ctx)
    repo.index.reset(repo.head().commit)
    click.echo("staged changes dropped")


def _fmt_change(c) -> str:
    if c.kind == "array":
        if c.status == "added":
            detail = f"{c.chunks_changed} chunks, {human_bytes(c.bytes_changed)}"
        elif c.status == "deleted":
            detail = f"{c.chunks_changed} chunks"
        else:
            detail = f"{c.chunks_changed} of {c.chunks_total} chunks changed, {human_bytes(c.bytes_changed)} new"
            if c.metadata_changed:
                detail += ", metadata changed"
        return f"{c.status + ':':<10}array    {c.name}  ({detail})"
    if c.kind == "document":
        return f"{c.status + ':':<10}document {c.name}"
    return f"{c.status + ':':<10}group    {c.name or '/'}"


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Show the branch, HEAD and the staged changes."""
    from .. import porcelain

    repo = _repo(ctx)
    st = porcelain.status(repo)
    where = f"On branch {st.branch}" if st.branch else "HEAD detached"
    head = f" at {st.head.id[:12]} \"{st.head.summary}\"" if st.head else " (no commits yet)"
    click.echo(where + head)
    for line in _pending_merge_lines(repo, st.head.id if st.head else None):
        click.echo(line)
    if st.head:
        from ..io.describe import has_population, population_lines
        from ..model import read_population

        snap = repo.snapshot_of(st.head.id)
        if has_population(snap):
            for line in population_lines(read_population(snap, grids=False)):
                click.echo(line)
    if st.clean:
        click.echo("nothing to commit")
        return
    click.echo("Changes to be committed:")
    for c in st.changes:
        click.echo("  " + _fmt_change(c))


def _pending_merge_lines(repo, head: str | None) -> list[str]:
    """What `status` says of a merge left pending with conflicts (docs/remotes.md §5)."""
    if not (repo.mrepo_dir / "MERGE_STATE.json").exists():  # checked first: collab is slow to import
        return []
    from ..collab.merge import merge_state

    try:
        state = merge_state(repo)
    except MrepoError as e:
        return [f"A merge is in progress, but its state is unreadable ({e.message}); run `mrepo merge --abort`"]
    if not state:
        return []
    theirs = str(state.get("theirs") or "")
    rev = state.get("rev") or theirs[:12]
    conflicts = list(state.get("conflicts") or [])
    n = len(conflicts)
    out = [f"Merge in progress: merging {rev} ({theirs[:12]}), {n} conflict{'s' if n != 1 else ''} pending resolution:"]
    out += [f"  conflict: {c}" for c in conflicts]
    if head is not None and state.get("ours") not in (None, head):
        out.append("  the branch moved since the merge started: run `mrepo merge --abort` and merge again")
    else:
        out.append("  resolve with `mrepo merge --ours OBJECT` or `--theirs OBJECT` (OBJECT: species/NAME, item/SRC/ITEM or all), "
                   "or give up with `mrepo merge --abort`")
    return out


def _decorations(repo) -> dict[str, list[str]]:
    dec: dict[str, list[str]] = {}
    h = repo.head()
    for b, sha in repo.branches().items():
        label = f"HEAD -> {b}" if h.branch == b else b
        dec.setdefault(sha, []).append(label)
    if h.branch is None and h.commit:
        dec.setdefault(h.commit, []).insert(0, "HEAD")
    for t in repo.tags():
        try:
            dec.setdefault(repo.resolve(f"refs/tags/{t}"), []).append(f"tag: {t}")
        except MrepoError:
            pass
    return dec


@main.command()
@click.argument("rev", default="HEAD")
@click.option("--oneline", is_flag=True, help="One line per commit.")
@click.option("-n", "max_count", type=int, help="Show at most N commits.")
@click.pass_context
def log(ctx: click.Context, rev: str, oneline: bool, max_count: int | None) -> None:
    """Show the history of REV (default HEAD)."""
    repo = _repo(ctx)
    dec = _decorations(repo)
    for ci in repo.log(rev, max_count=max_count):
        d = f" ({', '.join(dec[ci.id])})" if ci.id in dec else ""
        if oneline:
            extra = _meta_oneline(ci.metadata)
            click.echo(f"{ci.id[:12]}{d} {ci.summary}{extra}")
            continue
        click.echo(click.style(f"commit {ci.id}", fg="yellow") + d)
        if len(ci.parents) > 1:
            click.echo("Merge: " + " ".join(p[:12] for p in ci.parents))
        click.echo(f"Author: {ci.author}")
        click.echo(f"Date:   {_fmt_time(ci.time, ci.timezone)}")
        click.echo("")
        for line in ci.message.rstrip("\n").splitlines():
            click.echo(f"    {line}")
        if ci.metadata:
            s = _meta_oneline(ci.metadata)
            if s:
                click.echo(f"   {s}")
        click.echo("")


def _meta_oneline(meta: dict[str, Any]) -> str:
    """A short summary of commit metadata for log lines."""
    if not meta:
        return ""
    parts = []
    for k in ("operation", "summary"):
        if k in meta and isinstance(meta[k], (str, int, float)):
            parts.append(f"{k}={meta[k]}")
    return f"  [{', '.join(parts)}]" if parts else ""


@main.command()
@click.argument("spec", default="HEAD")
@click.pass_context
def show(ctx: click.Context, spec: str) -> None:
    """Show a commit (REV), an array or document (REV:PATH) or a folder (REV:DIR)."""
    import json

    from ..porcelain import parse_spec
    from ..store.arrays import array_info, list_nodes, node_kind
    from ..store.layout import validate_name

    repo = _repo(ctx)
    rev, path = parse_spec(spec)
    sha = repo.resolve(rev)
    if path is None:
        ci = repo.commit_info(sha)
        click.echo(click.style(f"commit {ci.id}", fg="yellow"))
        if ci.parents:
            click.echo("Parents: " + " ".join(p[:12] for p in ci.parents))
        click.echo(f"Author: {ci.author}")
        click.echo(f"Date:   {_fmt_time(ci.time, ci.timezone)}")
        click.echo("")
        for line in ci.message.rstrip("\n").splitlines():
            click.echo(f"    {line}")
        if ci.metadata:
            click.echo("")
            click.echo("Metadata:")
            for line in json.dumps(ci.metadata, indent=2, sort_keys=True).splitlines():
                click.echo(f"    {line}")
        if ci.parents:
            changes = repo.diff(ci.parents[0], ci.id)
            if changes:
                click.echo("")
                for c in changes:
                    click.echo("  " + _fmt_change(c))
        from ..io.describe import has_population, population_lines
        from ..model import read_population

        snap = repo.snapshot_of(sha)
        if has_population(snap):
            click.echo("")
            for line in population_lines(read_population(snap, grids=False)):
                click.echo(line)
        return
    snap = repo.snapshot_of(sha)
    if path:
        from ..io.describe import describe_path

        lines = describe_path(snap, path)
        if lines is not None:
            parts = path.strip("/").split("/")
            if len(parts) == 2 and parts[0] == "species":
                from ..model import read_population
                from ..refine.denoise import describe_denoiser

                lines = lines + describe_denoiser(read_population(snap, grids=False).species[parts[1]], snap)
            for line in lines:
                click.echo(line)
            return
    if path == "":
        nodes = list_nodes(snap)
        for n in nodes:
            click.echo(f"{n.kind:<9} {n.name}")
        if not nodes:
            click.echo("(empty)")
        return
    validate_name(path, "name")
    kind = node_kind(snap, path)
    if kind is None:
        raise MrepoError("no such array, document or folder", f"{rev}:{path}")
    if kind == "document":
        data = repo.read_document(sha, path)
        click.echo(data.decode("utf-8", "replace"), nl=not data.endswith(b"\n"))
        return
    if kind == "group":
        for n in list_nodes(snap):
            if n.name.startswith(path + "/"):
                click.echo(f"{n.kind:<9} {n.name}")
        return
    i = array_info(snap, path)
    vs = i.attributes.get("voxel_size")
    rows = [
        ("array", i.name),
        ("shape", " x ".join(map(str, i.shape)) or "scalar"),
        ("dtype", i.dtype),
        ("chunks", " x ".join(map(str, i.chunks))),
        ("codecs", ", ".join(i.codecs)),
        ("stored", f"{i.n_chunks} chunks, {human_bytes(i.stored_bytes)} ({human_bytes(i.nbytes)} uncompressed)"),
        ("digest", f"blake3:{i.digest}"),
    ]
    if vs:
        rows.append(("voxel size", " x ".join("?" if v is None else f"{v:.4g}" for v in vs) + " Å (z, y, x)"))
    src = i.attributes.get("source")
    if isinstance(src, dict) and src:
        desc = ", ".join(f"{k}={v}" for k, v in src.items() if k in ("format", "file", "mode", "byte_order"))
        rows.append(("source", desc))
    other = {k: v for k, v in i.attributes.items() if k not in ("voxel_size", "voxel_size_unit", "source")}
    if other:
        rows.append(("attributes", json.dumps(other, sort_keys=True)[:200]))
    for k, v in rows:
        click.echo(f"{k + ':':<12}{v}")


@main.command()
@click.argument("a", required=False)
@click.argument("b", required=False)
@click.pass_context
def diff(ctx: click.Context, a: str | None, b: str | None) -> None:
    """Changed arrays and documents: staged vs HEAD (no args), A vs HEAD, or A vs B."""
    from .. import porcelain

    repo = _repo(ctx)
    if a is None:
        changes = porcelain.status(repo).changes
    else:
        changes = repo.diff(a, b or "HEAD")
    if not changes:
        click.echo("no changes")
    total_chunks = sum(c.chunks_changed for c in changes)
    total_bytes = sum(c.bytes_changed for c in changes)
    for c in changes:
        click.echo(_fmt_change(c))
    if changes:
        click.echo(f"{len(changes)} changed, {total_chunks} chunks, {human_bytes(total_bytes)} of new data")


@main.command()
@click.argument("name", required=False)
@click.argument("start", required=False, default="HEAD")
@click.option("-d", "--delete", "delete", is_flag=True, help="Delete branch NAME.")
@click.pass_context
def branch(ctx: click.Context, name: str | None, start: str, delete: bool) -> None:
    """List branches, create NAME at START, or delete NAME (-d)."""
    repo = _repo(ctx)
    if name is None:
        h = repo.head()
        for b, sha in repo.branches().items():
            mark = "*" if b == h.branch else " "
            click.echo(f"{mark} {b:<20} {sha[:12]} {repo.commit_info(sha).summary}")
        return
    if delete:
        repo.delete_branch(name)
        click.echo(f"deleted branch {name}")
        return
    sha = repo.create_branch(name, start)
    click.echo(f"created branch {name} at {sha[:12]}")


@main.command()
@click.argument("name", required=False)
@click.argument("rev", required=False, default="HEAD")
@click.option("-m", "--message", help="Annotated tag message.")
@click.option("-d", "--delete", "delete", is_flag=True, help="Delete tag NAME.")
@click.pass_context
def tag(ctx: click.Context, name: str | None, rev: str, message: str | None, delete: bool) -> None:
    """List tags, create tag NAME at REV, or delete it (-d)."""
    repo = _repo(ctx)
    if name is None:
        for t in repo.tags():
            sha = repo.resolve(f"refs/tags/{t}")
            click.echo(f"{t:<20} {sha[:12]} {repo.commit_info(sha).summary}")
        return
    if delete:
        repo.delete_tag(name)
        click.echo(f"deleted tag {name}")
        return
    sha = repo.create_tag(name, rev, message)
    click.echo(f"tagged {sha[:12]} as {name}")


@main.command()
@click.argument("rev")
@click.option("-f", "--force", is_flag=True, help="Drop staged changes.")
@click.pass_context
def checkout(ctx: click.Context, rev: str, force: bool) -> None:
    """Switch to branch REV, or detach HEAD at commit REV."""
    repo = _repo(ctx)
    h = repo.checkout(rev, force=force)
    if h.branch:
        click.echo(f"switched to branch {h.branch} ({(h.commit or '')[:12]})")
    else:
        click.echo(f"HEAD is now detached at {(h.commit or '')[:12]}")


@main.command()
@click.argument("rev")
@click.option("-m", "--message", help="Commit message (default: Revert \"...\").")
@click.pass_context
def revert(ctx: click.Context, rev: str, message: str | None) -> None:
    """Commit the inverse of REV's changes on the current branch."""
    repo = _repo(ctx)
    sha = repo.revert(rev, message=message)
    ci = repo.commit_info(sha)
    click.echo(f"[{repo.head().branch or 'detached HEAD'} {sha[:12]}] {ci.summary}")
    for c in repo.diff(ci.parents[0], sha):
        click.echo("  " + _fmt_change(c))


class _ExportGroup(click.Group):
    """``mrepo export REV:PATH OUT`` for one array or document; format
    exporters (``mrepo export relion ...``) are subcommands."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands:
            return "array", self.commands["array"], args
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "REV:PATH OUT | FORMAT ...")


@main.group(cls=_ExportGroup)
def export() -> None:
    """Write array REV:PATH to OUT (.mrc/.mrcs/.map, .npy, .tif), a document as
    it is, or a whole species/population in another program's format."""


@export.command("array")
@click.argument("spec")
@click.argument("out", type=click.Path(dir_okay=False))
@click.pass_context
def export_array(ctx: click.Context, spec: str, out: str) -> None:
    """Write array REV:PATH to OUT (.mrc/.mrcs/.map, .npy, .tif) or a document as it is."""
    from .. import porcelain

    path, info = porcelain.export(_repo(ctx), spec, out)
    if info is None:
        click.echo(f"wrote document to {path}")
    else:
        vs = info.attributes.get("voxel_size")
        px = f", voxel size {vs[-1]:.4g} Å" if vs and vs[-1] else ""
        click.echo(f"wrote {'x'.join(map(str, info.shape))} {info.dtype}{px} to {path}")


@main.command()
@click.option("--fetch", "fetch_missing", is_flag=True, help="In a lazy clone, fetch and check chunks that are only promised by the remote.")
@click.pass_context
def fsck(ctx: click.Context, fetch_missing: bool) -> None:
    """Verify every object and chunk reachable from every ref."""
    repo = _repo(ctx)
    rep = repo.fsck(fetch_missing=fetch_missing)
    for p in rep.problems:
        click.echo(f"error: {p}", err=True)
    click.echo(
        f"checked {rep.refs} refs, {rep.commits} commits, {rep.trees} trees, {rep.blobs} blobs, "
        f"{rep.chunks} chunks ({human_bytes(rep.chunk_bytes)})"
        + (f", {rep.promised_chunks} promised by the remote (lazy clone; --fetch to check them)" if rep.promised_chunks else "")
        + ": " + ("ok" if rep.ok else f"{len(rep.problems)} problems")
    )
    if not rep.ok:
        ctx.exit(1)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")


def _parse_duration(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise InvalidInput("durations look like 0, 30m, 12h, 2d or 2w", text)
    mult = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    return float(m.group(1)) * mult


@main.command()
@click.option("--grace", default="2w", show_default=True, help="Keep unreachable chunks younger than this (0, 30m, 12h, 2d, 2w).")
@click.option("--dry-run", is_flag=True, help="Only report what would be freed.")
@click.pass_context
def gc(ctx: click.Context, grace: str, dry_run: bool) -> None:
    """Remove chunks no ref or staged change reaches, older than the grace period."""
    repo = _repo(ctx)
    rep = repo.gc(grace_seconds=_parse_duration(grace), dry_run=dry_run)
    verb = "would free" if dry_run else "freed"
    click.echo(
        f"{verb} {rep.removed_chunks} chunks ({human_bytes(rep.freed_bytes)}); "
        f"kept {rep.reachable_chunks} reachable and {rep.kept_recent_chunks} recent unreachable "
        f"({human_bytes(rep.kept_recent_bytes)}); removed {rep.removed_temp_files} temporary files"
    )


@main.command()
@click.argument("directory", default="mrepo-demo")
@click.option("--preset", default="small", type=click.Choice(["tiny", "small"]), show_default=True, help="Size of the simulated population.")
@click.option("--iterations", default=3, show_default=True, type=int, help="Refinement iterations.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--tour", is_flag=True, help="Instead: a tour of the storage commands on generated data.")
@click.pass_context
def demo(ctx: click.Context, directory: str, preset: str, iterations: int, seed: int, device: str, tour: bool) -> None:
    """The main job on an embedded default: simulate a population with known
    truth, refine it, and compare start, refined and oracle (true-parameter)
    reconstructions; or, with --tour, walk through the storage commands."""
    from ..demo import run_demo, run_store_tour

    if tour:
        run_store_tour(Path(ctx.obj["dir"]) / directory, size=preset, echo=click.echo, seed=seed)
    else:
        run_demo(Path(ctx.obj["dir"]) / directory, preset=preset, iterations=iterations, seed=seed, device=device, echo=click.echo)


# command groups that live in their own modules
from . import collab_commands, denoise_commands, io_commands, refine_commands, sim_commands  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    main()
