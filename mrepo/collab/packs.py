"""Chunk packs (moved to :mod:`mrepo.store.packs`: a repository's own chunk
store holds packs too); re-exported here for the transfer code."""

from ..store.packs import (  # noqa: F401
    INDEX_MAGIC,
    PACK_HEADER,
    PACK_MAGIC,
    PACK_VERSION,
    PackIndex,
    build_pack,
    coalesce,
    make_index,
    pack_names,
    parse_index,
)

__all__ = ["PACK_MAGIC", "INDEX_MAGIC", "PACK_VERSION", "PACK_HEADER", "PackIndex", "build_pack", "make_index", "parse_index",
           "pack_names", "coalesce"]
