"""Chunk packs: many chunks in one object, found through an index.

The same format serves pack stores of remotes (a directory or an S3 prefix)
and the chunk store of a repository (``mrepo/chunks/packs/``). docs/remotes.md
("Chunk packs and remotes") and docs/format.md (§4) are normative; in short:

``packs/<id>.pack``
    ``b"MRPK"``, format version (u32 LE, 1), then the chunks' bytes one
    after another. ``<id>`` is the BLAKE3 (hex) of the whole pack file.
``packs/<id>.idx``
    ``b"MRIX"``, version (u32 LE, 1), entry count (u64 LE), pack size in
    bytes (u64 LE); then one 48-byte entry per chunk, sorted by digest:
    digest (32 raw bytes), offset in the pack (u64 LE), size (u64 LE); then
    the pack id (32 raw bytes) and the BLAKE3 of every preceding byte of the
    index (32 raw bytes).

An index is written after its pack: a pack without an index is incomplete
and ignored. Readers verify the index checksum, the entries' order and
bounds, and every chunk they take from a pack against its digest.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import blake3
import numpy as np

from ..errors import CorruptObject

__all__ = [
    "PACK_MAGIC",
    "INDEX_MAGIC",
    "PACK_VERSION",
    "PACK_HEADER",
    "PackIndex",
    "build_pack",
    "make_index",
    "parse_index",
    "pack_names",
    "coalesce",
]

PACK_MAGIC = b"MRPK"
INDEX_MAGIC = b"MRIX"
PACK_VERSION = 1
PACK_HEADER = PACK_MAGIC + struct.pack("<I", PACK_VERSION)
_IDX_HEAD = struct.Struct("<4sIQQ")
_ENTRY = np.dtype([("digest", "V32"), ("offset", "<u8"), ("size", "<u8")])


def pack_names(pack_id: str) -> tuple[str, str]:
    """Object names of a pack and its index, relative to the pack store."""
    return f"packs/{pack_id}.pack", f"packs/{pack_id}.idx"


@dataclass
class PackIndex:
    """The parsed index of one pack: sorted raw digests with offsets and sizes."""

    pack_id: str
    pack_size: int
    entries: np.ndarray  # structured (_ENTRY), sorted by digest

    def __len__(self) -> int:
        return len(self.entries)

    def digests_hex(self) -> list[str]:
        raw = self.entries["digest"].tobytes()
        return [raw[i : i + 32].hex() for i in range(0, len(raw), 32)]

    def to_bytes(self) -> bytes:
        head = _IDX_HEAD.pack(INDEX_MAGIC, PACK_VERSION, len(self.entries), self.pack_size)
        body = head + self.entries.astype(_ENTRY, copy=False).tobytes() + bytes.fromhex(self.pack_id)
        return body + blake3.blake3(body).digest()


def build_pack(chunks: list[tuple[str, bytes]]) -> tuple[str, bytes, PackIndex]:
    """Pack ``(digest, bytes)`` pairs; returns (pack id, pack bytes, index).

    The caller has verified every chunk against its digest.
    """
    parts = [PACK_HEADER]
    offset = len(PACK_HEADER)
    placed: dict[str, tuple[int, int]] = {}
    for d, data in chunks:
        if d in placed:
            continue
        placed[d] = (offset, len(data))
        parts.append(data)
        offset += len(data)
    pack = b"".join(parts)
    pack_id = blake3.blake3(pack, max_threads=blake3.blake3.AUTO).hexdigest()
    return pack_id, pack, make_index(pack_id, len(pack), placed)


def make_index(pack_id: str, pack_size: int, placed: dict[str, tuple[int, int]]) -> PackIndex:
    """The index of pack ``pack_id`` from ``digest -> (offset, size)``."""
    order = sorted(placed)  # hex order is byte order
    entries = np.zeros(len(order), _ENTRY)
    entries["digest"] = np.frombuffer(b"".join(bytes.fromhex(d) for d in order), "V32") if order else entries["digest"]
    entries["offset"] = [placed[d][0] for d in order]
    entries["size"] = [placed[d][1] for d in order]
    return PackIndex(pack_id, pack_size, entries)


def parse_index(data: bytes, name: str) -> PackIndex:
    """Parse and verify an index; ``name`` is its object name (for errors)."""
    if len(data) < _IDX_HEAD.size + 64:
        raise CorruptObject("truncated pack index", name)
    body, check = data[:-32], data[-32:]
    if blake3.blake3(body).digest() != check:
        raise CorruptObject("pack index checksum mismatch (damaged or truncated)", name)
    magic, version, count, pack_size = _IDX_HEAD.unpack_from(body)
    if magic != INDEX_MAGIC:
        raise CorruptObject("not an mrepo pack index", name)
    if version != PACK_VERSION:
        raise CorruptObject(f"unsupported pack index version {version}", name)
    if len(body) != _IDX_HEAD.size + count * _ENTRY.itemsize + 32:
        raise CorruptObject("pack index length does not match its entry count", name)
    entries = np.frombuffer(body, _ENTRY, count, _IDX_HEAD.size).copy()
    pack_id = body[-32:].hex()
    if name.endswith(".idx") and not name.rsplit("/", 1)[-1].startswith(pack_id):
        raise CorruptObject("pack index names another pack", name)
    if count:
        hexes = PackIndex(pack_id, int(pack_size), entries).digests_hex()
        if any(a >= b for a, b in zip(hexes, hexes[1:])):
            raise CorruptObject("pack index entries are not sorted and unique", name)
        end = entries["offset"] + entries["size"]
        if int(entries["offset"].min()) < len(PACK_HEADER) or int(end.max()) > pack_size:
            raise CorruptObject("pack index entry points outside its pack", name)
    return PackIndex(pack_id, int(pack_size), entries)


Run = tuple[int, int, list[tuple[int, int, str]]]  # (start, end, [(offset, size, digest)])


def coalesce(items: list[tuple[int, int, str]], *, gap: int = 1 << 20, max_run: int = 16 << 20) -> list[list[Run]]:
    """Plan the reads of ``(offset, size, digest)`` items of one pack: items
    closer than ``gap`` bytes share a run (one contiguous read), runs are at
    most ``max_run`` bytes (unless one item is larger), and runs are grouped
    into batches of at most ``max_run`` bytes (one request each)."""
    items = sorted(items)
    runs: list[Run] = []
    for off, size, d in items:
        if runs and off - runs[-1][1] <= gap and off + size - runs[-1][0] <= max_run:
            s, e, members = runs[-1]
            members.append((off, size, d))
            runs[-1] = (s, max(e, off + size), members)
        else:
            runs.append((off, off + size, [(off, size, d)]))
    batches: list[list[Run]] = []
    batch: list[Run] = []
    total = 0
    for r in runs:
        if batch and total + (r[1] - r[0]) > max_run:
            batches.append(batch)
            batch, total = [], 0
        batch.append(r)
        total += r[1] - r[0]
    if batch:
        batches.append(batch)
    return batches
