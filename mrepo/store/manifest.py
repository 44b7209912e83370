"""Array manifests: chunk key → (digest, size), stored as readable JSON blobs.

One entry per line so that ``git diff`` of a manifest shows which chunks
changed::

    {"format": "mrepo-manifest", "version": 1, "chunks": {
    "c/0/0/0": ["<64-hex blake3>", 4194304],
    "c/0/0/1": ["<64-hex blake3>", 4194304]
    }}

Keys are relative to the owner folder and sorted by code point.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ..errors import CorruptObject
from .chunks import ChunkRef
from .digest import is_digest

__all__ = ["encode_manifest", "decode_manifest", "MANIFEST_VERSION"]

MANIFEST_VERSION = 1


def encode_manifest(chunks: Mapping[str, ChunkRef]) -> bytes:
    lines = [
        json.dumps(k, ensure_ascii=False) + ': ["' + ref.digest + '", ' + str(int(ref.size)) + "]"
        for k, ref in sorted(chunks.items())
    ]
    body = ",\n".join(lines)
    head = '{"format": "mrepo-manifest", "version": %d, "chunks": {' % MANIFEST_VERSION
    if not lines:
        return (head + "}}\n").encode("utf-8")
    return (head + "\n" + body + "\n}}\n").encode("utf-8")


def decode_manifest(data: bytes, where: str = "manifest") -> dict[str, ChunkRef]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptObject(f"manifest is not valid JSON: {e}", where) from None
    if not isinstance(doc, dict) or doc.get("format") != "mrepo-manifest":
        raise CorruptObject("not an mrepo manifest", where)
    if doc.get("version") != MANIFEST_VERSION:
        raise CorruptObject(f"unsupported manifest version {doc.get('version')!r}", where)
    chunks = doc.get("chunks")
    if not isinstance(chunks, dict):
        raise CorruptObject("manifest has no chunk table", where)
    out: dict[str, ChunkRef] = {}
    for k, v in chunks.items():
        if (
            not isinstance(v, list)
            or len(v) != 2
            or not isinstance(v[0], str)
            or not is_digest(v[0])
            or not isinstance(v[1], int)
            or v[1] < 0
        ):
            raise CorruptObject(f"malformed manifest entry for chunk {k!r}", where)
        out[k] = ChunkRef(v[0], v[1])
    return out
