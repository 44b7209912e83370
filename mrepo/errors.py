"""The one exception hierarchy of mrepo.

Every error mrepo raises on purpose is a :class:`MrepoError`. Each class has a
stable ``kind`` code (used by the CLI and by tests) and a message that names
the object or file concerned. ``NotFound`` is also a ``KeyError`` and
``InvalidInput`` also a ``ValueError`` so that ordinary Python code can catch
them the usual way.
"""

from __future__ import annotations

__all__ = [
    "MrepoError",
    "InvalidInput",
    "FormatError",
    "NotFound",
    "NotARepository",
    "CorruptObject",
    "ConflictError",
    "LockError",
    "DegenerateResult",
]


class MrepoError(Exception):
    """Base class of all mrepo errors.

    Parameters
    ----------
    message:
        What went wrong, in one line.
    obj:
        The object, file or ref concerned (printed in parentheses by the CLI).
    """

    kind = "error"
    retryable = False

    def __init__(self, message: str, obj: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.obj = obj

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        if self.obj:
            return f"{self.message} ({self.obj})"
        return self.message


class InvalidInput(MrepoError, ValueError):
    """Bad input from the user: a name, a path, an option, an argument."""

    kind = "invalid-input"


class FormatError(InvalidInput):
    """A file that does not follow its format (truncated MRC, malformed STAR/XML...)."""

    kind = "format"


class NotFound(MrepoError, KeyError):
    """A revision, ref, array, document or object that does not exist."""

    kind = "not-found"


class NotARepository(MrepoError):
    """A path that is not an mrepo repository."""

    kind = "not-a-repository"


class CorruptObject(MrepoError):
    """Stored data whose content does not match its digest or cannot be parsed."""

    kind = "corrupt"


class ConflictError(MrepoError):
    """Concurrent or conflicting changes; the operation may be retried."""

    kind = "conflict"
    retryable = True


class LockError(ConflictError):
    """Another process holds a lock that this operation needs."""

    kind = "locked"


class DegenerateResult(MrepoError):
    """A computation whose result is meaningless (NaN, all-zero scores...)."""

    kind = "degenerate"
