"""Moving chunks to and from a remote: pack stores and repository chunk stores.

Two kinds of chunk remote share one interface (:class:`ChunkRemote`):

- :class:`PackStore`: packs with indexes (:mod:`mrepo.collab.packs`) in a
  directory or an S3-compatible bucket. Uploads group chunks into packs of
  about ``MREPO_PACK_BYTES`` (default 32 MiB) sent in parallel; downloads
  coalesce wanted chunks into ranged reads of whole runs of a pack. The
  indexes the client has seen are cached under
  ``.git/mrepo/remotes/<name>/idx/`` so that "what does the remote have"
  costs one listing and the new indexes only.
- :class:`RepoChunks`: the chunk store of an mrepo repository on a path
  (local or network filesystem). Pushes write packs (the same format) into
  that repository's chunk store (``.git/mrepo/chunks/packs/``), so the
  repository reads them itself (loose or packed, verified); fetches read
  its packs with a few large coalesced reads, and its loose chunk files
  (written by its own commits, or by older mrepo) in parallel.

Nothing a remote sends is trusted: every chunk is verified against its
BLAKE3 digest on arrival, before it is stored; a mismatch, a truncated pack
or a damaged index raises :class:`~mrepo.errors.CorruptObject` naming it.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CorruptObject, InvalidInput, MrepoError, NotFound
from ..store.atomic import fsync_dir
from ..store.chunks import ChunkStore, _run_all
from ..store.digest import blake3_hex
from .packs import PackIndex, build_pack, coalesce, pack_names, parse_index
from .remotes import ChunkURL, environ_flag

__all__ = [
    "TransferStats",
    "ChunkRemote",
    "PackStore",
    "RepoChunks",
    "open_chunk_remote",
    "RemoteError",
]

Progress = Callable[[int], None] | None


class RemoteError(MrepoError):
    """A remote could not be reached or refused a request."""

    kind = "remote"
    retryable = True


@dataclass
class TransferStats:
    """What a transfer moved: chunks and their bytes, packs, requests.

    ``bytes`` counts the chunks' own bytes; ``wire`` every byte of the
    objects written or read (pack headers and indexes, the gaps inside a
    coalesced ranged read), without the protocol's own framing."""

    chunks: int = 0
    bytes: int = 0
    packs: int = 0
    requests: int = 0
    skipped: int = 0  # chunks the other side already had
    wire: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, chunks: int = 0, nbytes: int = 0, packs: int = 0, requests: int = 0, wire: int | None = None) -> None:
        with self._lock:
            self.chunks += chunks
            self.bytes += nbytes
            self.packs += packs
            self.requests += requests
            self.wire += nbytes if wire is None else wire

    def as_dict(self) -> dict[str, int]:
        return {"chunks": self.chunks, "bytes": self.bytes, "packs": self.packs, "requests": self.requests,
                "skipped": self.skipped, "wire": self.wire}


def _threads() -> int:
    return environ_flag("MREPO_TRANSFER_THREADS", 8)


def parallel_each(fn: Callable, items: Sequence, threads: int | None = None) -> list:
    """``[fn(x) for x in items]`` on a thread pool, in batches (one task per
    batch, not per item: a future costs more than a small file operation)."""
    items = list(items)
    threads = threads or _threads()
    if len(items) < 64 or threads <= 1:
        return [fn(x) for x in items]
    n = max(1, min(len(items) // 16, threads * 8))
    size = -(-len(items) // n)
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = list(pool.map(lambda b: [fn(x) for x in b], batches))
    return [y for part in parts for y in part]


def _pack_bytes() -> int:
    return environ_flag("MREPO_PACK_BYTES", 32 << 20)


def pack_groups(chunks: Mapping[str, int], target: int | None = None) -> list[list[str]]:
    """Split ``chunks`` (digest -> size, in the order to keep: an array's
    chunks together) into groups of about ``target`` bytes, one pack each."""
    target = target or _pack_bytes()
    groups: list[list[str]] = [[]]
    size = 0
    for d, n in chunks.items():
        if groups[-1] and size + n > target:
            groups.append([])
            size = 0
        groups[-1].append(d)
        size += n
    return [g for g in groups if g]


# ---------------------------------------------------------------------------
# blob backends
# ---------------------------------------------------------------------------
class _Backend:
    url: str

    def list(self, prefix: str) -> list[tuple[str, int]]: ...
    def get(self, name: str) -> bytes: ...
    def get_ranges(self, name: str, starts: Sequence[int], ends: Sequence[int]) -> list[bytes]: ...
    def put(self, name: str, data: bytes) -> None: ...


class _DirBackend(_Backend):
    """Objects as files in a directory (local or network filesystem)."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url

    def list(self, prefix: str) -> list[tuple[str, int]]:
        d = self.root / prefix
        if not d.is_dir():
            return []
        out = []
        for n in os.listdir(d):
            p = d / n
            if p.is_file():
                out.append((f"{prefix}{n}" if prefix.endswith("/") else f"{prefix}/{n}", p.stat().st_size))
        return out

    def get(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            raise NotFound("missing object in the chunk remote", f"{self.url}/{name}") from None
        except OSError as e:
            raise RemoteError(f"cannot read from the chunk remote: {e.strerror}", f"{self.url}/{name}") from None

    def get_ranges(self, name: str, starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
        try:
            fd = os.open(self.root / name, os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound("missing pack in the chunk remote", f"{self.url}/{name}") from None
        try:
            return [os.pread(fd, e - s, s) for s, e in zip(starts, ends)]
        finally:
            os.close(fd)

    def put(self, name: str, data: bytes) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise RemoteError(f"cannot write to the chunk remote: {e.strerror}", f"{self.url}/{name}") from None
        fsync_dir(target.parent)


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


class _S3Backend(_Backend):
    """Objects in an S3-compatible bucket, through obstore.

    Credentials and endpoint come from the usual environment variables
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
    ``AWS_ENDPOINT_URL``) or the URL's ``?endpoint=...&region=...``.
    """

    def __init__(self, cu: ChunkURL) -> None:
        try:
            from obstore.store import S3Store
        except ImportError:  # pragma: no cover - obstore is a dependency
            raise InvalidInput("S3 chunk remotes need the 'obstore' package", cu.url) from None
        self.url = cu.url
        self.bucket = cu.bucket
        opts = dict(cu.options)
        endpoint = opts.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kw: dict = {}
        if endpoint:
            kw["endpoint"] = endpoint
        if opts.get("region"):
            kw["region"] = opts["region"]
        elif not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
            kw["region"] = "us-east-1"
        if endpoint:
            kw["virtual_hosted_style_request"] = False
        retries = environ_flag("MREPO_S3_RETRIES", 3)
        self.store = S3Store(
            cu.bucket,
            prefix=cu.prefix or None,
            client_options={
                "allow_http": bool(endpoint and endpoint.startswith("http://")),
                "connect_timeout": "5s",
                "timeout": f"{environ_flag('MREPO_S3_TIMEOUT', 120)}s",
            },
            retry_config={
                "max_retries": retries,
                "retry_timeout": _dt.timedelta(seconds=environ_flag("MREPO_S3_RETRY_SECONDS", 20)),
                "backoff": {"init_backoff": _dt.timedelta(milliseconds=100), "max_backoff": _dt.timedelta(seconds=2), "base": 2},
            },
            **kw,
        )

    def _err(self, e: Exception, name: str) -> MrepoError:
        text = str(e)
        code = re.search(r"<Code>([^<]{1,64})</Code>", text)
        code = code.group(1) if code else None
        if code == "NoSuchBucket":
            return NotFound("no such bucket in the object store (create it first)", f"s3://{self.bucket}")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            return RemoteError(
                f"the object store refused access ({code}); check the credentials in the environment "
                "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or ~/.aws",
                f"{self.url}/{name}",
            )
        if isinstance(e, FileNotFoundError):
            return NotFound("missing object in the chunk remote", f"{self.url}/{name}")
        if code:
            msg = re.search(r"<Message>([^<]{1,200})</Message>", text)
            return RemoteError(f"object store error: {code}" + (f": {msg.group(1)}" if msg else ""), f"{self.url}/{name}")
        return RemoteError(f"object store error: {_one_line(e)}", f"{self.url}/{name}")

    def list(self, prefix: str) -> list[tuple[str, int]]:
        import obstore

        try:
            out = []
            for batch in obstore.list(self.store, prefix=prefix):
                out.extend((m["path"], int(m["size"])) for m in batch)
            return out
        except Exception as e:
            raise self._err(e, prefix) from None

    def get(self, name: str) -> bytes:
        import obstore

        try:
            return bytes(obstore.get(self.store, name).bytes())
        except Exception as e:
            raise self._err(e, name) from None

    def get_ranges(self, name: str, starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
        import obstore

        try:
            return [bytes(b) for b in obstore.get_ranges(self.store, name, starts=list(starts), ends=list(ends))]
        except Exception as e:
            raise self._err(e, name) from None

    def put(self, name: str, data: bytes) -> None:
        import obstore

        try:
            obstore.put(self.store, name, data)
        except Exception as e:
            raise self._err(e, name) from None


# ---------------------------------------------------------------------------
# chunk remotes
# ---------------------------------------------------------------------------
ChunkSink = Callable[[str, bytes], None]


class ChunkRemote:
    """Where a remote keeps its chunks."""

    url: str

    def available(self, digests: Iterable[str], *, refresh: bool = True) -> set[str]:
        """The subset of ``digests`` the remote has."""
        raise NotImplementedError

    def upload(self, local: ChunkStore, chunks: Mapping[str, int], progress: Progress = None) -> TransferStats:
        """Send ``chunks`` (digest -> size) from ``local``; the caller has
        removed those the remote already has."""
        raise NotImplementedError

    def download(self, digests: Iterable[str], sink: ChunkSink, progress: Progress = None) -> TransferStats:
        """Fetch ``digests``, verify each, and hand it to ``sink``."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _verify(d: str, data: bytes, where: str) -> None:
    if blake3_hex(data) != d:
        raise CorruptObject(f"chunk from the remote does not match its digest ({where})", d)


class PackStore(ChunkRemote):
    """Packs and indexes under ``packs/`` of a directory or an S3 prefix."""

    def __init__(self, backend: _Backend, cache_dir: Path | None) -> None:
        self.backend = backend
        self.url = backend.url
        self.cache_dir = cache_dir
        self._where: dict[str, tuple[str, int, int]] = {}  # digest -> (pack id, offset, size)
        self._indexes: dict[str, PackIndex] = {}
        self._lock = threading.Lock()
        self._loaded_cache = False
        self._listed = False
        self._promise_lock = threading.Lock()

    # -- indexes ---------------------------------------------------------------
    def _add_index(self, idx: PackIndex) -> None:
        self._indexes[idx.pack_id] = idx
        offs = idx.entries["offset"].tolist()
        sizes = idx.entries["size"].tolist()
        for d, o, s in zip(idx.digests_hex(), offs, sizes):
            self._where.setdefault(d, (idx.pack_id, o, s))

    def _load_cache(self) -> None:
        if self._loaded_cache or self.cache_dir is None:
            self._loaded_cache = True
            return
        self._loaded_cache = True
        if self.cache_dir.is_dir():
            for n in sorted(os.listdir(self.cache_dir)):
                if n.endswith(".idx") and n[:-4] not in self._indexes:
                    try:
                        self._add_index(parse_index((self.cache_dir / n).read_bytes(), n))
                    except CorruptObject:
                        (self.cache_dir / n).unlink(missing_ok=True)  # refetched below

    def refresh(self) -> int:
        """List the remote's indexes and read the new ones; returns how many."""
        with self._lock:
            self._load_cache()
            names = [n for n, _ in self.backend.list("packs/") if n.endswith(".idx")]
            new = [n for n in names if n.rsplit("/", 1)[-1][:-4] not in self._indexes]

            def fetch(n: str) -> PackIndex:
                return parse_index(self.backend.get(n), f"{self.url}/{n}")

            with ThreadPoolExecutor(max_workers=_threads()) as pool:
                idxs = list(pool.map(fetch, new))
            for n, idx in zip(new, idxs):
                self._add_index(idx)
                if self.cache_dir is not None:
                    self.cache_dir.mkdir(parents=True, exist_ok=True)
                    tmp = self.cache_dir / f".tmp-{uuid.uuid4().hex}"
                    tmp.write_bytes(idx.to_bytes())
                    os.replace(tmp, self.cache_dir / f"{idx.pack_id}.idx")
            self._listed = True
            return len(new)

    def available(self, digests: Iterable[str], *, refresh: bool = True) -> set[str]:
        if refresh:
            self.refresh()
        else:
            with self._lock:
                self._load_cache()
        return {d for d in digests if d in self._where}

    def promised(self, digest: str) -> bool:
        """Is ``digest`` in a pack of the remote? Uses the cached indexes and
        lists the remote at most once per instance (unreachable: False)."""
        with self._lock:
            self._load_cache()
        if digest in self._where:
            return True
        with self._promise_lock:  # concurrent callers wait for the one listing
            if not self._listed:
                try:
                    self.refresh()
                except MrepoError:
                    self._listed = True
        return digest in self._where

    # -- upload ------------------------------------------------------------------
    def upload(self, local: ChunkStore, chunks: Mapping[str, int], progress: Progress = None) -> TransferStats:
        stats = TransferStats()

        def send(group: list[str]) -> None:
            got = local.get_many(group, threads=2)  # verified reads (a lazy repository fetches what it lacks)
            data = [(d, got[d]) for d in group]
            pack_id, pack, idx = build_pack(data)
            pname, iname = pack_names(pack_id)
            idx_bytes = idx.to_bytes()
            self.backend.put(pname, pack)
            self.backend.put(iname, idx_bytes)  # the index commits the pack
            with self._lock:
                self._add_index(idx)
            nbytes = sum(len(b) for _, b in data)
            stats.add(chunks=len(data), nbytes=nbytes, packs=1, requests=2, wire=len(pack) + len(idx_bytes))
            if progress:
                progress(nbytes)

        _run_all(send, pack_groups(chunks), _threads())
        return stats

    # -- download --------------------------------------------------------------
    def download(self, digests: Iterable[str], sink: ChunkSink, progress: Progress = None) -> TransferStats:
        stats = TransferStats()
        want = list(dict.fromkeys(digests))
        if not want:
            return stats
        missing = [d for d in want if d not in self._where]
        if missing:
            self.refresh()
            missing = [d for d in want if d not in self._where]
            if missing:
                raise NotFound(f"{len(missing)} chunks are in no pack of the chunk remote (first shown)", missing[0])
        by_pack: dict[str, list[tuple[int, int, str]]] = {}
        for d in want:
            pid, off, size = self._where[d]
            by_pack.setdefault(pid, []).append((off, size, d))
        tasks = [(pid, batch) for pid, items in by_pack.items() for batch in coalesce(items)]

        def get(task: tuple[str, list[tuple[int, int, list[tuple[int, int, str]]]]]) -> None:
            pid, runs = task
            pname, _ = pack_names(pid)
            where = f"{self.url}/{pname}"
            bufs = self.backend.get_ranges(pname, [r[0] for r in runs], [r[1] for r in runs])
            nbytes = 0
            for (start, end, members), buf in zip(runs, bufs):
                if len(buf) != end - start:
                    raise CorruptObject(f"truncated pack: got {len(buf)} of {end - start} bytes at offset {start}", where)
                for off, size, d in members:
                    data = buf[off - start : off - start + size]
                    _verify(d, data, where)
                    sink(d, data)
                    nbytes += size
            stats.add(chunks=sum(len(r[2]) for r in runs), nbytes=nbytes, requests=1, wire=sum(len(b) for b in bufs))
            if progress:
                progress(nbytes)

        _run_all(get, tasks, _threads())
        stats.packs = len(by_pack)
        return stats

    def fetch(self, digests: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        lock = threading.Lock()

        def sink(d: str, data: bytes) -> None:
            with lock:
                out[d] = data

        self.download(digests, sink)
        return out


class RepoChunks(ChunkRemote):
    """The chunk store of an mrepo repository on a (network) filesystem path.

    Chunks go there as packs (docs/remotes.md §2.4): a push writes a few
    packs and their indexes into ``.git/mrepo/chunks/packs/``; the
    repository reads them as its own. Reads take packed chunks with a few
    large coalesced reads and loose chunk files (that repository's own
    commits, or remotes written by older mrepo) one by one, in parallel.
    Every chunk is verified on arrival; the remote's indexes are checked
    (a damaged one stops the transfer)."""

    def __init__(self, path: Path) -> None:
        from ..store.repository import open_repo

        self.url = str(path)
        root = open_repo(path, search_parents=False).mrepo_dir / "chunks"
        self.store = ChunkStore(root, strict_packs=True)  # no fetcher: only what is there

    def available(self, digests: Iterable[str], *, refresh: bool = True) -> set[str]:
        digests = list(digests)
        lacking = set(self.store.missing(digests, threads=_threads()))
        return {d for d in digests if d not in lacking}

    def promised(self, digest: str) -> bool:
        try:
            return self.store.has(digest)
        except MrepoError:
            return False

    def upload(self, local: ChunkStore, chunks: Mapping[str, int], progress: Progress = None) -> TransferStats:
        stats = TransferStats()

        def send(group: list[str]) -> None:
            got = local.get_many(group, threads=2)  # verified reads (a lazy repository fetches what it lacks)
            idx = self.store.write_pack([(d, got[d]) for d in group])
            nbytes = sum(len(got[d]) for d in group)
            stats.add(chunks=len(group), nbytes=nbytes, packs=1, requests=2, wire=idx.pack_size + len(idx.to_bytes()))
            if progress:
                progress(nbytes)

        _run_all(send, pack_groups(chunks), _threads())
        return stats

    def download(self, digests: Iterable[str], sink: ChunkSink, progress: Progress = None) -> TransferStats:
        stats = TransferStats()

        def take(d: str, data: bytes) -> None:
            sink(d, data)
            stats.add(chunks=1, nbytes=len(data), wire=0)
            if progress:
                progress(len(data))

        try:
            reads, wire, packs = self.store.read_many(digests, take, fetch=False, threads=_threads())
        except NotFound as e:
            raise NotFound("chunk missing in the remote repository", e.obj) from None
        stats.requests, stats.wire, stats.packs = reads, wire, packs
        return stats

    def fetch(self, digests: Sequence[str]) -> dict[str, bytes]:
        try:
            return self.store.get_many(digests, fetch=False, threads=_threads())
        except NotFound as e:
            raise NotFound("chunk missing in the remote repository", e.obj) from None


def open_chunk_remote(cu: ChunkURL, cache_dir: Path | None = None) -> ChunkRemote:
    """The chunk remote for a chunk URL; ``cache_dir`` keeps a pack store's indexes."""
    if cu.kind == "repo":
        return RepoChunks(cu.path)  # type: ignore[arg-type]
    if cu.kind == "dir":
        return PackStore(_DirBackend(cu.path, cu.url), cache_dir)  # type: ignore[arg-type]
    if cu.kind == "s3":
        return PackStore(_S3Backend(cu), cache_dir)
    raise InvalidInput("unknown chunk URL kind", cu.url)
