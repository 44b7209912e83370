"""Moving history (git objects and refs) to and from a remote.

- A **path** remote is another mrepo repository: objects are copied as
  verified loose objects, children before parents (so an interrupted copy
  never leaves a commit whose tree is missing), and its refs are moved with
  the repository's own compare-and-swap.
- A **git://** remote is a git server; dulwich's client speaks the git
  protocol (upload-pack to fetch, receive-pack to push; the server checks
  each ref's old value, so pushes are compare-and-swap too).

Refs are only moved after every object (and, by the caller, every chunk)
they reach is in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dulwich.objects import Commit, Tag, Tree

from ..errors import ConflictError, CorruptObject, MrepoError, NotFound
from ..store.atomic import fsync_dir
from ..store.refs import MISSING
from .chunkremote import RemoteError, _one_line
from .remotes import RepoURL

__all__ = ["HistoryRemote", "PathHistory", "GitHistory", "open_history", "copy_objects"]

ZERO = "0" * 40


def release_packs(objects) -> None:
    """Close the dulwich pack store a GitObjects opened (it reopens on demand),
    so pack files are released now rather than at interpreter exit."""
    close = getattr(objects, "close", None)
    if close is not None:
        close()


def copy_objects(src, dst, wants: Iterable[str], *, pack_threshold: int = 32) -> tuple[int, int]:
    try:
        return _copy_objects(src, dst, wants, pack_threshold=pack_threshold)
    finally:
        release_packs(src)
        release_packs(dst)


def _copy_objects(src, dst, wants: Iterable[str], *, pack_threshold: int = 32) -> tuple[int, int]:
    """Copy the objects reachable from ``wants`` that ``dst`` lacks.
    ``src``/``dst`` are :class:`~mrepo.store.objects.GitObjects`; every object
    read is verified. Up to ``pack_threshold`` objects are written loose,
    children first (an interruption never leaves a commit without its tree);
    more go into one git pack, written and fsynced before it is moved into
    place (all or nothing). Returns (objects written, their compressed bytes)."""
    order: list = []
    seen: set[str] = set()
    for want in wants:
        if dst.exists(want):
            continue
        stack: list[tuple[str, bool]] = [(want, False)]
        while stack:
            sha, expanded = stack.pop()
            if expanded:
                order.append(src.read(sha))
                continue
            if sha in seen or dst.exists(sha):
                continue
            seen.add(sha)
            obj = src.read(sha)
            stack.append((sha, True))
            if isinstance(obj, Commit):
                stack.append((obj.tree.decode("ascii"), False))
                stack.extend((p.decode("ascii"), False) for p in obj.parents)
            elif isinstance(obj, Tag):
                stack.append((obj.object[1].decode("ascii"), False))
            elif isinstance(obj, Tree):
                for item in obj.iteritems():
                    if item.mode & 0o170000 == 0o160000:  # submodule link
                        continue
                    stack.append((item.sha.decode("ascii"), False))
    if not order:
        return 0, 0
    if len(order) <= pack_threshold:
        nbytes = 0
        for obj in order:
            dst.write(obj)
            nbytes += sum(len(c) for c in obj.as_legacy_object_chunks())
        dst.sync()
        return len(order), nbytes
    store = dst.dulwich_store
    store.fsync_object_files = True
    pack_dir = dst.objects_dir / "pack"
    before = {p.name: p.stat().st_size for p in pack_dir.glob("*.pack")} if pack_dir.exists() else {}
    store.add_objects([(obj, None) for obj in order])
    fsync_dir(pack_dir)
    after = {p.name: p.stat().st_size for p in pack_dir.glob("*.pack")}
    return len(order), sum(v for k, v in after.items() if k not in before)


class HistoryRemote:
    url: str

    def refs(self) -> dict[str, str]:
        """Every ref of the remote (``refs/...``) -> object id."""
        raise NotImplementedError

    def head_branch(self) -> str | None:
        """The branch the remote's HEAD names (``refs/heads/x``), if known."""
        return None

    def fetch(self, local, wants: list[str]) -> tuple[int, int] | None:
        """Bring the objects reachable from ``wants`` into ``local``; returns
        (objects, bytes) moved when known."""
        raise NotImplementedError

    def push(self, local, updates: Mapping[str, tuple[str | None, str]]) -> tuple[int, int] | None:
        """Move remote refs: ref -> (expected old id or None for new, new id);
        returns (objects, bytes) moved when known."""
        raise NotImplementedError


class PathHistory(HistoryRemote):
    def __init__(self, url: RepoURL) -> None:
        from ..repository import open_repo

        self.url = url.url
        self.repo = open_repo(url.path, search_parents=False)

    def refs(self) -> dict[str, str]:
        return self.repo.refs.list("refs/")

    def head_branch(self) -> str | None:
        target, _ = self.repo.refs.read_head()
        return target

    def fetch(self, local, wants: list[str]) -> None:
        try:
            return copy_objects(self.repo.objects, local.objects, wants)
        except NotFound as e:
            raise CorruptObject(f"the remote repository lacks an object its refs reach ({e.message})", e.obj) from None

    def push(self, local, updates: Mapping[str, tuple[str | None, str]]) -> None:
        moved = copy_objects(local.objects, self.repo.objects, [new for _, new in updates.values()])
        for ref, (old, new) in updates.items():
            self.repo.refs.set(ref, new, old if old else MISSING, message="push", ident=local.identity().encode())
        return moved


class GitHistory(HistoryRemote):
    def __init__(self, url: RepoURL) -> None:
        from dulwich.client import get_transport_and_path

        self.url = url.url
        self.client, self.path = get_transport_and_path(url.url)
        self._ls = None

    def _ls_remote(self):
        if self._ls is None:
            try:
                self._ls = self.client.get_refs(self.path.encode() if isinstance(self.path, str) else self.path)
            except MrepoError:
                raise
            except Exception as e:
                raise RemoteError(f"cannot list the refs of the git remote: {_one_line(e)}", self.url) from None
        return self._ls

    def refs(self) -> dict[str, str]:
        ls = self._ls_remote()
        out = {}
        for k, v in ls.refs.items():
            name = k.decode("utf-8", "replace")
            if name.startswith("refs/") and not name.endswith("^{}") and v:
                out[name] = v.decode("ascii")
        return out

    def head_branch(self) -> str | None:
        ls = self._ls_remote()
        target = (getattr(ls, "symrefs", None) or {}).get(b"HEAD")
        return target.decode() if target else None

    def _dulwich(self, local):
        from dulwich.repo import Repo

        return Repo(str(local.gitdir))

    def fetch(self, local, wants: list[str]) -> None:
        wants = [w for w in wants if not local.objects.exists(w)]
        if not wants:
            return
        dr = self._dulwich(local)
        dr.object_store.fsync_object_files = True  # the pack is durable before any ref points into it
        try:
            self.client.fetch(
                self.path,
                dr,
                determine_wants=lambda refs, depth=None: [w.encode("ascii") for w in wants],
            )
        except MrepoError:
            raise
        except Exception as e:
            raise RemoteError(f"fetching history from the git remote failed: {_one_line(e)}", self.url) from None
        finally:
            dr.close()
        for w in wants:
            if not local.objects.exists(w):
                raise CorruptObject("the git remote did not send an object its refs reach", w)

    def push(self, local, updates: Mapping[str, tuple[str | None, str]]) -> None:
        dr = self._dulwich(local)
        problems: list[str] = []

        def update_refs(old_refs):
            new = dict(old_refs)
            for ref, (old, sha) in updates.items():
                cur = old_refs.get(ref.encode())
                cur = cur.decode("ascii") if cur and cur != ZERO.encode() else None
                if cur != old:
                    problems.append(ref)
                    raise ConflictError(
                        f"the remote ref moved (expected {(old or 'nothing')[:12]}, found {(cur or 'nothing')[:12]}); fetch and try again",
                        ref,
                    )
                new[ref.encode()] = sha.encode("ascii")
            return new

        try:
            res = self.client.send_pack(self.path, update_refs, generate_pack_data=dr.object_store.generate_pack_data)
        except MrepoError:
            raise
        except Exception as e:
            raise RemoteError(f"pushing history to the git remote failed: {_one_line(e)}", self.url) from None
        finally:
            dr.close()
        status = getattr(res, "ref_status", None) or {}
        for ref, err in status.items():
            if err:
                raise ConflictError(f"the git remote refused the update: {err}", ref.decode() if isinstance(ref, bytes) else ref)


def open_history(url: RepoURL) -> HistoryRemote:
    if url.kind == "path":
        return PathHistory(url)
    return GitHistory(url)
