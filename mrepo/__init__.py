"""mrepo: multi-particle cryo-EM/ET refinement (the M method) on a
content-addressed repository with version-control semantics.

>>> import mrepo
>>> repo = mrepo.init_repo("project")          # doctest: +SKIP
>>> repo = mrepo.open_repo("project")          # doctest: +SKIP
"""

from .errors import (
    ConflictError,
    CorruptObject,
    FormatError,
    InvalidInput,
    LockError,
    MrepoError,
    NotARepository,
    NotFound,
)
from .repository import Repository, init_repo, open_repo
from .store import Transaction

__version__ = "0.1.0"

__all__ = [
    "ConflictError",
    "CorruptObject",
    "FormatError",
    "InvalidInput",
    "LockError",
    "MrepoError",
    "NotARepository",
    "NotFound",
    "Repository",
    "Transaction",
    "__version__",
    "init_repo",
    "open_repo",
]
