"""The chunk fetcher of lazy clones, registered with the store.

A lazy clone's config says ``[mrepo] fetcher = mrepo.collab.fetcher`` and
``[mrepo "lazy"] remote = origin``; the store (which knows nothing of
remotes) looks this module up in its fetcher registry on the first missing
chunk, and this module builds a fetcher reading from that remote's chunk
URL. The store verifies and caches what it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..store.chunks import register_fetcher
from .chunkremote import ChunkRemote, open_chunk_remote
from .remotes import get_config, get_remote

__all__ = ["RemoteFetcher", "make_fetcher"]


class RemoteFetcher:
    """Fetches missing chunks from a remote's chunk store (one ranged read per call)."""

    def __init__(self, remote_name: str, cr: ChunkRemote) -> None:
        self.remote = remote_name
        self.chunk_remote = cr

    def __call__(self, digests: Sequence[str]) -> dict[str, bytes]:
        return self.chunk_remote.fetch(list(digests))  # type: ignore[attr-defined]

    def promised(self, digest: str) -> bool:
        return self.chunk_remote.promised(digest)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<RemoteFetcher {self.remote} {self.chunk_remote.url}>"


def make_fetcher(repo) -> RemoteFetcher:
    name = get_config(repo, ("mrepo", "lazy"), "remote") or "origin"
    r = get_remote(repo, name)
    return RemoteFetcher(name, open_chunk_remote(r.chunks, Path(repo.mrepo_dir) / "remotes" / name / "idx"))


register_fetcher(__name__, make_fetcher)
