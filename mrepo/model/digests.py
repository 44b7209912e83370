"""Content digests of the domain objects (M's hash semantics, with BLAKE3).

All digests are BLAKE3 (64 lowercase hex) of canonical bytes:

- ``array_content_digest(a)``: canonical JSON header
  ``{"dtype": "<f4", "shape": [..]}``, one ``\\n`` byte, then the array's
  C-order little-endian bytes. It depends on the values only, never on how the
  array is chunked or compressed in a repository.
- ``json_digest(obj)``: canonical JSON (sorted keys, no whitespace).

See :mod:`mrepo.model.provenance` for which fields each object's digest covers.
"""

from __future__ import annotations

from typing import Any

import blake3
import numpy as np

from ..store.digest import canonical_json, json_digest

__all__ = ["array_content_digest", "json_digest", "canonical_json", "dtype_code"]

_BLOCK = 64 << 20


def dtype_code(dtype: np.dtype) -> str:
    """Little-endian dtype string, e.g. ``<f4``, ``|i1``."""
    d = np.dtype(dtype)
    return d.newbyteorder("<").str if d.byteorder not in ("|",) else d.str


def array_content_digest(a: Any, *, block_rows: int | None = None) -> str:
    """BLAKE3 over a header and the C-order little-endian bytes of ``a``.

    ``a`` may be a numpy array, a memmap or a ``zarr.Array``; it is read in
    blocks along the first axis so big arrays need not fit in memory.
    """
    shape = tuple(int(s) for s in a.shape)
    dt = np.dtype(a.dtype)
    le = dt.newbyteorder("<")
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update(canonical_json({"dtype": dtype_code(dt), "shape": list(shape)}) + b"\n")
    if not shape:
        h.update(np.ascontiguousarray(np.asarray(a[...]), dtype=le).tobytes())
        return h.hexdigest()
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dt.itemsize if len(shape) > 1 else dt.itemsize
    step = block_rows or max(1, _BLOCK // max(1, row_bytes))
    for start in range(0, shape[0], step):
        block = np.ascontiguousarray(np.asarray(a[start : start + step]), dtype=le)
        h.update(memoryview(block).cast("B"))
    return h.hexdigest()
