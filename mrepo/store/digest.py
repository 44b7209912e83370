"""BLAKE3 digests and canonical JSON (DESIGN.md §5).

A digest is BLAKE3 of canonical bytes, as 64 lowercase hex characters.
Canonical JSON is UTF-8 with sorted keys and no insignificant whitespace.
"""

from __future__ import annotations

import json
import re
from typing import Any

import blake3

__all__ = ["DIGEST_RE", "blake3_hex", "canonical_json", "json_digest", "is_digest"]

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")

# Below this size a single thread is faster than spreading the work.
_MT_THRESHOLD = 1 << 20


def blake3_hex(data: bytes | bytearray | memoryview) -> str:
    """BLAKE3 of ``data`` as 64 hex characters (multithreaded above 1 MiB)."""
    if len(data) >= _MT_THRESHOLD:
        return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()
    return blake3.blake3(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, ``,``/``:`` separators, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def json_digest(obj: Any) -> str:
    """BLAKE3 digest of the canonical JSON of ``obj``."""
    return blake3_hex(canonical_json(obj))


def is_digest(text: str) -> bool:
    """True when ``text`` is a well-formed digest (64 lowercase hex)."""
    return bool(DIGEST_RE.match(text))
