"""Sharing populations: remotes, clone/fetch/pull/push, merge, species requests.

History travels as git objects (dulwich: a path repository or a git server);
chunks travel beside it in packs (into a directory, an S3-compatible object
store, or the chunk store of a path repository), only those the other side
lacks, in parallel, each verified by its BLAKE3 digest on arrival.
See docs/remotes.md (format) and docs/howto-collab.md (workflows).
"""

from .chunkremote import PackStore, RemoteError, RepoChunks, TransferStats, open_chunk_remote
from .collisions import CollisionReport, find_collisions, plot_collisions
from .merge import MergeConflict, MergeResult, abort_merge, merge, merge_base, merge_state
from .remotes import Remote, add_remote, get_remote, list_remotes, remove_remote
from .requests import Request, RequestCheck, check_request, create_request, get_request, list_requests, merge_request
from .transfer import FetchResult, PushResult, clone, fetch, is_lazy, prefetch, push, read_chunks_from


def pull(repo, remote: str = "origin", branch: str | None = None, **merge_kw) -> tuple[FetchResult, MergeResult]:
    """Fetch ``remote`` and merge its ``branch`` (default: the current branch's name) into the current branch."""
    from ..errors import NotFound

    res = fetch(repo, remote)
    b = branch or repo.head().branch
    if b is None:
        from ..errors import InvalidInput

        raise InvalidInput("HEAD is detached; name the branch to pull")
    ref = f"refs/remotes/{remote}/{b}"
    if repo.refs.read(ref) is None:
        raise NotFound("the remote has no such branch", f"{remote}/{b}")
    return res, merge(repo, ref, message=f"Merge {remote}/{b}")


__all__ = [
    "CollisionReport",
    "FetchResult",
    "MergeConflict",
    "MergeResult",
    "PackStore",
    "PushResult",
    "Remote",
    "RemoteError",
    "RepoChunks",
    "Request",
    "RequestCheck",
    "TransferStats",
    "abort_merge",
    "add_remote",
    "check_request",
    "clone",
    "create_request",
    "fetch",
    "find_collisions",
    "get_remote",
    "get_request",
    "is_lazy",
    "list_remotes",
    "list_requests",
    "merge",
    "merge_base",
    "merge_request",
    "merge_state",
    "open_chunk_remote",
    "plot_collisions",
    "prefetch",
    "pull",
    "push",
    "read_chunks_from",
    "remove_remote",
]
