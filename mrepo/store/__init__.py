"""Content-addressed, git-readable storage of named arrays, tables and documents.

This layer knows nothing of cryo-EM (DESIGN.md §2): it versions zarr v3
arrays (chunks addressed by BLAKE3, manifests and metadata in git objects),
small documents, commits, branches and tags.

Levels, as in icechunk: :class:`Repository` (refs, history, gc) →
:class:`Transaction` (staged changes on a base commit, committed with one
compare-and-swap) → :class:`MrepoStore` (a zarr v3 ``Store``).
"""

from typing import TYPE_CHECKING, Any

from .arrays import ArrayInfo, array_info, default_chunks, delete_node, list_nodes, open_array, read_document, write_array, write_document
from .chunks import ChunkRef, ChunkStore
from .repository import CommitInfo, HeadInfo, Repository, init_repo, open_repo
from .snapshot import Entry, Snapshot
from .transaction import Transaction

if TYPE_CHECKING:
    from .zarr_store import MrepoStore


def __getattr__(name: str) -> Any:
    # zarr takes most of a command's start-up time; commands that never open
    # a zarr Store (commit, log, status, fsck, gc...) should not pay for it
    if name == "MrepoStore":
        from .zarr_store import MrepoStore

        return MrepoStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ArrayInfo",
    "ChunkRef",
    "ChunkStore",
    "CommitInfo",
    "Entry",
    "HeadInfo",
    "MrepoStore",
    "Repository",
    "Snapshot",
    "Transaction",
    "array_info",
    "default_chunks",
    "delete_node",
    "init_repo",
    "list_nodes",
    "open_array",
    "open_repo",
    "read_document",
    "write_array",
    "write_document",
]
