"""Git refs: HEAD, branches and tags, updated with compare-and-swap.

Refs are stored exactly as git stores them (loose files under ``refs/``,
``packed-refs`` read when present, ``HEAD`` symbolic or detached) so stock git
sees them. Updates hold an ``flock`` on ``mrepo/locks/refs.lock`` (dropped by
the kernel if the process dies), compare the current value with the expected
one, and replace the ref file atomically; each update is appended to git's
reflog so that no commit a ref ever pointed to is lost from view.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from dulwich.refs import check_ref_format

from ..errors import ConflictError, CorruptObject, InvalidInput, NotFound
from .atomic import FileLock, atomic_write, crashpoint, fsync_dir

__all__ = ["RefStore", "MISSING", "ANY"]

_SHA_RE = re.compile(rb"^[0-9a-f]{40}\n?$")

MISSING = "<missing>"  # expected value meaning "the ref must not exist"
ANY = "<any>"  # expected value meaning "whatever it is"


class RefStore:
    def __init__(self, gitdir: str | os.PathLike[str], lock_path: str | os.PathLike[str]) -> None:
        self.gitdir = Path(gitdir)
        self.lock = FileLock(lock_path, what="refs")

    # -- names ---------------------------------------------------------------
    @staticmethod
    def check_name(name: str) -> None:
        if not name.startswith("refs/") or not check_ref_format(name.encode("utf-8")):
            raise InvalidInput("invalid ref name", name)

    # -- reading -------------------------------------------------------------
    def _packed(self) -> dict[str, str]:
        p = self.gitdir / "packed-refs"
        out: dict[str, str] = {}
        if not p.exists():
            return out
        for line in p.read_bytes().splitlines():
            if not line or line.startswith(b"#") or line.startswith(b"^"):
                continue
            parts = line.split(b" ", 1)
            if len(parts) != 2 or not _SHA_RE.match(parts[0]):
                raise CorruptObject("corrupt packed-refs line", str(p))
            out[parts[1].decode("utf-8")] = parts[0].decode("ascii")
        return out

    def read(self, name: str) -> str | None:
        """The commit id a ref points to, or None if the ref does not exist."""
        path = self.gitdir / name
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return self._packed().get(name)
        if not _SHA_RE.match(raw):
            raise CorruptObject("corrupt ref: not a 40-hex object id", name)
        return raw[:40].decode("ascii")

    def read_head(self) -> tuple[str | None, str | None]:
        """(symbolic target or None when detached, commit id or None if unborn)."""
        p = self.gitdir / "HEAD"
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            raise CorruptObject("missing HEAD", "HEAD") from None
        if raw.startswith(b"ref: "):
            target = raw[5:].strip().decode("utf-8", "replace")
            if not raw.endswith(b"\n") or raw.count(b"\n") != 1 or not target.startswith("refs/heads/"):
                raise CorruptObject("corrupt HEAD", "HEAD")
            try:
                self.check_name(target)
            except InvalidInput:
                raise CorruptObject("corrupt HEAD", "HEAD") from None
            return target, self.read(target)
        if _SHA_RE.match(raw):
            return None, raw[:40].decode("ascii")
        raise CorruptObject("corrupt HEAD", "HEAD")

    def list(self, prefix: str = "refs/") -> dict[str, str]:
        """All refs under ``prefix`` (loose ones override packed ones)."""
        out = {k: v for k, v in self._packed().items() if k.startswith(prefix)}
        base = self.gitdir / prefix
        root = self.gitdir
        if base.is_dir():
            for dirpath, _dirs, files in os.walk(base):
                for f in files:
                    if f.endswith(".lock"):
                        continue
                    full = Path(dirpath) / f
                    name = full.relative_to(root).as_posix()
                    sha = self.read(name)
                    if sha is not None:
                        out[name] = sha
        return dict(sorted(out.items()))

    # -- writing -------------------------------------------------------------
    def _reflog(self, name: str, old: str | None, new: str | None, message: str, ident: bytes) -> None:
        p = self.gitdir / "logs" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        zero = "0" * 40
        ts = int(time.time())
        tz = time.strftime("%z") or "+0000"
        line = f"{old or zero} {new or zero} ".encode() + ident + f" {ts} {tz}\t{message}\n".encode("utf-8")
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _check_expected(self, name: str, current: str | None, expected: str) -> None:
        if expected == ANY:
            return
        want = None if expected == MISSING else expected
        if current != want:
            if want is None:
                raise ConflictError("ref already exists", name)
            raise ConflictError(
                f"ref moved (expected {want[:12]}, found {current[:12] if current else 'nothing'}); "
                "another process committed first, try again",
                name,
            )

    def set(self, name: str, new: str, expected: str = ANY, *, message: str = "", ident: bytes = b"mrepo <mrepo@localhost>") -> None:
        """Point ``name`` at ``new`` if it currently equals ``expected``."""
        self.check_name(name)
        with self.lock:
            current = self.read(name)
            self._check_expected(name, current, expected)
            path = self.gitdir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, new + "\n")
            crashpoint("before-reflog")
            self._reflog(name, current, new, message, ident)
            if name.startswith("refs/heads/"):
                head_target, _ = self.read_head()
                if head_target == name:
                    self._reflog("HEAD", current, new, message, ident)

    def delete(self, name: str, expected: str = ANY) -> None:
        self.check_name(name)
        with self.lock:
            current = self.read(name)
            if current is None:
                raise NotFound("no such ref", name)
            self._check_expected(name, current, expected)
            path = self.gitdir / name
            if path.exists():
                path.unlink()
                fsync_dir(path.parent)
            packed = self._packed()
            if name in packed:
                del packed[name]
                text = "# pack-refs with: peeled fully-peeled sorted \n" + "".join(
                    f"{v} {k}\n" for k, v in sorted(packed.items())
                )
                atomic_write(self.gitdir / "packed-refs", text)
            log = self.gitdir / "logs" / name
            if log.exists():
                log.unlink()

    def set_head(self, *, branch: str | None = None, detached: str | None = None, expected: str = ANY) -> None:
        """Point HEAD at a branch (symbolic) or at a commit (detached)."""
        with self.lock:
            if expected != ANY:
                _, cur = self.read_head()
                self._check_expected("HEAD", cur, expected)
            if branch is not None:
                self.check_name(branch)
                atomic_write(self.gitdir / "HEAD", f"ref: {branch}\n")
            elif detached is not None:
                old_target, old = self.read_head()
                atomic_write(self.gitdir / "HEAD", detached + "\n")
                self._reflog("HEAD", old, detached, "checkout", b"mrepo <mrepo@localhost>")
            else:
                raise InvalidInput("set_head needs a branch or a commit")
