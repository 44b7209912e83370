"""Remotes: where a repository's history and chunks are shared.

A remote has a **repository URL** (its history, i.e. git objects and refs)
and a **chunk URL** (its chunks):

===========================  ==============================================
repository URL               history travels through
===========================  ==============================================
``/path`` or ``file:///p``   the mrepo repository at that path (local or
                             network filesystem)
``git://host:port/repo``     a git server (``git daemon``), via dulwich
===========================  ==============================================

===========================  ==============================================
chunk URL                    chunks travel as
===========================  ==============================================
(none, path repository)      packs in that repository's own chunk store
``/path`` or ``file:///p``   packs in a directory (a pack store)
``s3://bucket/prefix``       packs in an S3-compatible object store
===========================  ==============================================

Remotes are kept in the repository's git config (``[remote "NAME"]`` with
``url``, ``fetch`` and mrepo's ``mrepochunks``), so stock git sees them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from dulwich.config import ConfigFile

from ..errors import InvalidInput, NotFound
from ..store.atomic import FileLock, atomic_write

__all__ = [
    "Remote",
    "RepoURL",
    "ChunkURL",
    "parse_repo_url",
    "parse_chunk_url",
    "add_remote",
    "remove_remote",
    "list_remotes",
    "get_remote",
    "set_config",
    "get_config",
    "unset_config",
    "redact_url",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class RepoURL:
    """Where a remote's history lives. ``kind`` is ``path`` or ``git``."""

    kind: str
    url: str
    path: Path | None = None  # for kind == "path"

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class ChunkURL:
    """Where a remote's chunks live. ``kind`` is ``repo`` (the chunk store of
    a path repository), ``dir`` (a pack store in a directory) or ``s3``."""

    kind: str
    url: str
    path: Path | None = None  # repo / dir
    bucket: str | None = None  # s3
    prefix: str = ""  # s3
    options: tuple[tuple[str, str], ...] = ()  # s3 query options (endpoint, region)

    def __str__(self) -> str:
        return self.url


_USERINFO_RE = re.compile(r"^([a-z][a-z0-9+.-]*://)([^/@?#]*)@")


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` part (and that of an
    ``endpoint=`` option) replaced by ``***@``, for messages."""
    out = _USERINFO_RE.sub(r"\1***@", url)
    return re.sub(r"(endpoint=[a-z][a-z0-9+.-]*://)[^/@?#&]*@", r"\1***@", out)


def _no_credentials(url: str, what: str) -> None:
    """Refuse a URL that carries credentials: mrepo never stores them
    (they would land in the config, and in every message naming the URL)."""
    if redact_url(url) != url:
        raise InvalidInput(
            f"{what} must not contain credentials (user:password@); S3 credentials come from the "
            "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or ~/.aws, a git server's from its own setup",
            redact_url(url),
        )


def _local_path(url: str) -> Path:
    if url.startswith("file://"):
        p = urlparse(url).path
        return Path(p)
    return Path(url).expanduser()


def parse_repo_url(url: str) -> RepoURL:
    """Parse a repository URL: a path, ``file://`` or ``git://``."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("empty repository URL")
    _no_credentials(url, "a repository URL")
    if url.startswith("git://"):
        u = urlparse(url)
        if not u.hostname or not u.path or u.path == "/":
            raise InvalidInput("a git URL looks like git://host[:port]/path", url)
        return RepoURL("git", url)
    if re.match(r"^[a-z][a-z0-9+.-]*://", url) and not url.startswith("file://"):
        scheme = url.split(":", 1)[0]
        raise InvalidInput(f"unsupported repository URL scheme '{scheme}' (use a path, file:// or git://)", url)
    p = _local_path(url).resolve()
    return RepoURL("path", str(p), p)


def parse_chunk_url(url: str) -> ChunkURL:
    """Parse a chunk URL: ``s3://bucket/prefix[?endpoint=...&region=...]``, a path or ``file://``."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("empty chunk URL")
    _no_credentials(url, "a chunk URL")
    if url.startswith("s3://"):
        u = urlparse(url)
        if not u.netloc:
            raise InvalidInput("an S3 URL looks like s3://bucket/prefix", url)
        opts = []
        if u.query:
            for part in u.query.split("&"):
                k, _, v = part.partition("=")
                if k not in ("endpoint", "region"):
                    raise InvalidInput(f"unknown S3 URL option '{k}' (endpoint, region)", url)
                opts.append((k, v))
        return ChunkURL("s3", url, bucket=u.netloc, prefix=u.path.strip("/"), options=tuple(opts))
    if re.match(r"^[a-z][a-z0-9+.-]*://", url) and not url.startswith("file://"):
        scheme = url.split(":", 1)[0]
        raise InvalidInput(f"unsupported chunk URL scheme '{scheme}' (use a path, file:// or s3://)", url)
    p = _local_path(url).resolve()
    return ChunkURL("dir", str(p), path=p)


@dataclass(frozen=True)
class Remote:
    name: str
    url: RepoURL
    chunks: ChunkURL

    @property
    def tracking_prefix(self) -> str:
        return f"refs/remotes/{self.name}/"


def _default_chunks(url: RepoURL, chunks: str | None) -> ChunkURL:
    if chunks:
        return parse_chunk_url(chunks)
    if url.kind == "path":
        return ChunkURL("repo", url.url, path=url.path)
    raise InvalidInput("a git:// remote needs a chunk URL beside it (--chunks s3://bucket/prefix or a path)", url.url)


# ---------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------
def _config_path(repo) -> Path:
    return Path(repo.gitdir) / "config"


def _lock(repo) -> FileLock:
    return FileLock(Path(repo.mrepo_dir) / "locks" / "config.lock", what="config")


def _read(repo) -> ConfigFile:
    return ConfigFile.from_path(str(_config_path(repo)))


def _write(repo, cfg: ConfigFile) -> None:
    import io

    buf = io.BytesIO()
    cfg.write_to_file(buf)
    atomic_write(_config_path(repo), buf.getvalue())


def get_config(repo, section: tuple[str, ...], key: str) -> str | None:
    try:
        return _read(repo).get(tuple(s.encode() for s in section), key.encode()).decode("utf-8")
    except KeyError:
        return None


def set_config(repo, section: tuple[str, ...], key: str, value: str) -> None:
    with _lock(repo):
        cfg = _read(repo)
        cfg.set(tuple(s.encode() for s in section), key.encode(), value.encode("utf-8"))
        _write(repo, cfg)


def unset_config(repo, section: tuple[str, ...], key: str | None = None) -> None:
    with _lock(repo):
        cfg = _read(repo)
        sec = tuple(s.encode() for s in section)
        if sec in cfg:
            if key is None:
                del cfg[sec]
            elif key.encode() in cfg[sec]:
                del cfg[sec][key.encode()]
        _write(repo, cfg)


def check_remote_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise InvalidInput("invalid remote name (letters, digits, '.', '_', '-')", repr(name))
    return name


def add_remote(repo, name: str, url: str, *, chunks: str | None = None) -> Remote:
    """Add remote ``name`` (error if it exists)."""
    check_remote_name(name)
    ru = parse_repo_url(url)
    cu = _default_chunks(ru, chunks)
    with _lock(repo):
        cfg = _read(repo)
        sec = (b"remote", name.encode())
        if sec in cfg:
            raise InvalidInput("remote already exists", name)
        cfg.set(sec, b"url", ru.url.encode())
        cfg.set(sec, b"fetch", f"+refs/heads/*:refs/remotes/{name}/*".encode())
        if chunks:
            cfg.set(sec, b"mrepochunks", cu.url.encode())
        _write(repo, cfg)
    return Remote(name, ru, cu)


def remove_remote(repo, name: str) -> None:
    check_remote_name(name)  # the URLs are not parsed: a remote with a bad one can still be removed
    if (b"remote", name.encode()) not in _read(repo):
        raise NotFound("no such remote", name)
    unset_config(repo, ("remote", name))
    for ref in list(repo.refs.list(f"refs/remotes/{name}/")):
        repo.refs.delete(ref)


def get_remote(repo, name: str) -> Remote:
    check_remote_name(name)
    cfg = _read(repo)
    sec = (b"remote", name.encode())
    try:
        url = cfg.get(sec, b"url").decode()
    except KeyError:
        raise NotFound("no such remote", name) from None
    try:
        chunks = cfg.get(sec, b"mrepochunks").decode()
    except KeyError:
        chunks = None
    ru = parse_repo_url(url)
    return Remote(name, ru, _default_chunks(ru, chunks))


def list_remotes(repo) -> list[Remote]:
    cfg = _read(repo)
    names = sorted(sec[1].decode() for sec in cfg.sections() if len(sec) == 2 and sec[0] == b"remote")
    return [get_remote(repo, n) for n in names]


def environ_flag(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default
