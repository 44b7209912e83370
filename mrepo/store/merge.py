"""Three-way combination of key states (used by revert, and by merges).

Each key is merged independently: a key changed on one side only takes that
side's value; a key changed on both sides to different values is a conflict.
The conflicts are returned; nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .diff import changed_keys
from .snapshot import Entry, Snapshot

__all__ = ["ThreeWay", "three_way"]


@dataclass
class ThreeWay:
    """``changes``: key -> entry to apply on top of ``ours``;
    ``conflicts``: key -> (base, ours, theirs) entries."""

    changes: dict[str, Entry | None] = field(default_factory=dict)
    conflicts: dict[str, tuple[Entry | None, Entry | None, Entry | None]] = field(default_factory=dict)


def three_way(base: Snapshot, ours: Snapshot, theirs: Snapshot) -> ThreeWay:
    """Changes that bring ``theirs``' edits (relative to ``base``) onto ``ours``."""
    out = ThreeWay()
    for key, (b, t) in changed_keys(base, theirs).items():
        o = ours.get(key)
        if o == t:
            continue  # already there
        if o == b:
            out.changes[key] = t
        else:
            out.conflicts[key] = (b, o, t)
    return out
