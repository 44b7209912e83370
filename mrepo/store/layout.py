"""Where things live in a commit's tree, and which names are allowed.

A commit's tree has three top-level folders (docs/format.md is normative):

``data/``
    the zarr v3 hierarchy. A key whose last component is a zarr metadata
    document (``zarr.json``, or the zarr v2 ``.zarray``/``.zattrs``/``.zgroup``/
    ``.zmetadata``) is a git blob at ``data/<key>``. Every other key is a
    *chunk*: its bytes are in the chunk store and its digest is an entry of
    the ``manifest.json`` of its *owner*, the deepest ancestor folder that
    holds a metadata document (or ``data`` itself).
``docs/``
    small documents (JSON, TOML, text), one blob each.
``.mrepo/``
    ``format.json`` (format version) and ``commit.json`` (optional commit metadata).
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import InvalidInput

__all__ = [
    "DATA",
    "DOCS",
    "META",
    "MANIFEST",
    "METADATA_NAMES",
    "FORMAT_PATH",
    "COMMIT_META_PATH",
    "is_blob_key",
    "is_metadata_key",
    "ancestors",
    "validate_name",
    "data_key",
    "doc_key",
]

DATA = "data"
DOCS = "docs"
META = ".mrepo"
MANIFEST = "manifest.json"
METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})
FORMAT_PATH = f"{META}/format.json"
COMMIT_META_PATH = f"{META}/commit.json"


def basename(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def is_metadata_key(key: str) -> bool:
    return basename(key) in METADATA_NAMES


def is_blob_key(key: str) -> bool:
    """True for keys stored as git blobs, False for chunk keys."""
    if not key.startswith(DATA + "/"):
        return True
    return is_metadata_key(key)


def ancestors(key: str) -> Iterator[str]:
    """Folders containing ``key`` within ``data``, deepest first, ending with ``data``."""
    parts = key.split("/")
    for i in range(len(parts) - 1, 0, -1):
        yield "/".join(parts[:i])


_FORBIDDEN_COMPONENTS = {"", ".", ".."} | set(METADATA_NAMES) | {MANIFEST}


def validate_name(name: str, what: str = "name") -> str:
    """Check a user-visible array or document name; return it unchanged.

    Names are relative, ``/``-separated paths: no leading ``/``, no empty,
    ``.`` or ``..`` components, no backslashes or control characters, no
    component reserved by zarr (``__*``) or by the format.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"empty {what}")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InvalidInput(f"{what} must be relative, not an absolute path", name)
    if "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInput(f"{what} contains a backslash or control character", name)
    for comp in name.split("/"):
        if comp in _FORBIDDEN_COMPONENTS:
            if comp in ("", ".", ".."):
                raise InvalidInput(f"{what} has an empty, '.' or '..' component", name)
            raise InvalidInput(f"{what} uses the reserved component '{comp}'", name)
        if comp.startswith("__"):
            raise InvalidInput(f"{what} component starts with the reserved prefix '__'", name)
        if len(comp.encode("utf-8")) > 255:
            raise InvalidInput(f"{what} component longer than 255 bytes", name)
    return name


def data_key(name: str) -> str:
    return f"{DATA}/{name}" if name else DATA


def doc_key(name: str) -> str:
    return f"{DOCS}/{name}"
