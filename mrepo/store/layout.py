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

import re
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
    "bad_key_component",
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

# Names git reserves in trees: `git fsck` rejects a tree holding them (hasDotgit,
# gitmodulesBlob, gitattributesBlob). Git compares them ignoring letter case,
# trailing dots and spaces (NTFS), the code points HFS+ ignores, and also
# knows their 8.3 short forms (git~1, gitmod~1, gi7eba~1, ...).
_GIT_RESERVED = frozenset({".git", ".gitmodules", ".gitattributes"})
_GIT_SHORT_NAMES = re.compile(r"(git|gitmod|gi7eba|gitatt|gi7d29)~[0-9]+")
_HFS_IGNORED = dict.fromkeys([*range(0x200C, 0x2010), *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF])


def _git_reserved(comp: str) -> bool:
    folded = comp.translate(_HFS_IGNORED).casefold().rstrip(" .")
    return folded in _GIT_RESERVED or _GIT_SHORT_NAMES.fullmatch(folded) is not None


def bad_key_component(key: str) -> str | None:
    """The first component of tree path ``key`` that no tree may hold
    (``.``, ``..`` or a name git reserves), or None. Cheap: it runs on every
    staged key."""
    for comp in key.split("/"):
        if comp in (".", "..") or (("." in comp or "~" in comp) and _git_reserved(comp)):
            return comp
    return None


def validate_name(name: str, what: str = "name") -> str:
    """Check a user-visible array or document name; return it unchanged.

    Names are relative, ``/``-separated paths: no leading ``/``, no empty,
    ``.`` or ``..`` components, no backslashes or control characters, no
    component reserved by zarr (``__*``), by the format or by git (``.git``,
    ``.gitmodules``, ``.gitattributes`` and their variants, which would make
    ``git fsck`` reject the commit's tree).
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
        if _git_reserved(comp):
            raise InvalidInput(f"{what} uses a component that git reserves ('{comp}')", name)
        if len(comp.encode("utf-8")) > 255:
            raise InvalidInput(f"{what} component longer than 255 bytes", name)
    return name


def data_key(name: str) -> str:
    return f"{DATA}/{name}" if name else DATA


def doc_key(name: str) -> str:
    return f"{DOCS}/{name}"
