"""The repository as mrepo's users see it: the store's repository plus the
domain (populations, provenance). ``mrepo.open_repo`` returns this class."""

from __future__ import annotations

import os
from typing import Any

from .store import repository as _store

__all__ = ["Repository", "open_repo", "init_repo"]


class Repository(_store.Repository):
    """A repository holding a population (see :mod:`mrepo.model`)."""

    def population(self, rev: str = "HEAD", **kw: Any):
        """The population at ``rev`` as typed objects (particle columns lazy)."""
        from .model import read_population

        return read_population(self.snapshot(rev), **kw)

    def verify(self, rev: str = "HEAD", **kw: Any):
        """Recompute the provenance digests at ``rev``; returns the problems found."""
        from .model import verify_population

        return verify_population(self.snapshot(rev), **kw)


def open_repo(path: str | os.PathLike[str] = ".", *, search_parents: bool = True) -> Repository:
    """Open the repository at ``path`` (or above it)."""
    return Repository(_store.open_repo(path, search_parents=search_parents).path)


def init_repo(path: str | os.PathLike[str], *, branch: str = "main") -> Repository:
    """Create a repository at ``path``."""
    return Repository(_store.init_repo(path, branch=branch).path)
