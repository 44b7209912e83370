"""Physical collisions between a contributed species and existing ones.

Two particles in the same item collide when their centres are closer than
the sum of their radii (half of each species' diameter, Å). A particle's
centre is the mean of its position trajectory over temporal samples.
Particles are matched per item (by item data digest); the search uses one
KD-tree (:class:`scipy.spatial.cKDTree`) per item and existing species, so
it scales as O(N log M).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..model.species import Species

__all__ = ["ItemCollisions", "CollisionReport", "find_collisions", "plot_collisions", "centres"]


def centres(sp: Species) -> np.ndarray:
    """(N, 3) particle centres in Å: the mean over temporal samples."""
    c = np.asarray(sp.particles.coordinates[...], np.float64)
    return c.mean(axis=1) if c.ndim == 3 else c


@dataclass
class ItemCollisions:
    item: str  # "source/item" label (or the digest when unknown)
    new: int  # particles of the new species in this item
    colliding: int  # of those, how many collide with at least one existing particle
    pairs: int  # colliding (new, existing) pairs


@dataclass
class CollisionReport:
    species: str
    against: dict[str, float]  # existing species -> collision distance (Å)
    total: int
    colliding: int
    pairs: int
    per_item: list[ItemCollisions] = field(default_factory=list)
    colliding_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # rows of the new species

    @property
    def fraction(self) -> float:
        return self.colliding / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        return {
            "species": self.species,
            "against": self.against,
            "particles": self.total,
            "colliding": self.colliding,
            "pairs": self.pairs,
            "per_item": {c.item: {"new": c.new, "colliding": c.colliding, "pairs": c.pairs} for c in self.per_item},
        }


def find_collisions(new: Species, existing: list[Species], labels: dict[str, str] | None = None) -> CollisionReport:
    """Particles of ``new`` closer than the sum of radii to particles of ``existing`` in the same item."""
    labels = labels or {}
    pn = new.particles
    pos = centres(new)
    item_idx = np.asarray(pn.item[...])
    others = []
    for sp in existing:
        if sp.name == new.name:
            continue
        others.append((sp, centres(sp), np.asarray(sp.particles.item[...]), list(sp.particles.items)))
    against = {sp.name: (new.diameter_angstrom + sp.diameter_angstrom) / 2 for sp, *_ in others}
    colliding = np.zeros(len(pn), bool)
    pairs_total = 0
    per_item: list[ItemCollisions] = []
    for k, digest in enumerate(pn.items):
        rows = np.flatnonzero(item_idx == k)
        if rows.size == 0:
            continue
        hit = np.zeros(rows.size, bool)
        pairs = 0
        for sp, opos, oidx, oitems in others:
            try:
                j = oitems.index(digest)
            except ValueError:
                continue
            q = opos[oidx == j]
            if q.size == 0:
                continue
            r = np.nextafter(against[sp.name], 0)  # strictly closer than the sum of radii
            tree = cKDTree(q)
            counts = tree.query_ball_point(pos[rows], r, return_length=True)
            hit |= counts > 0
            pairs += int(counts.sum())
        colliding[rows] = hit
        pairs_total += pairs
        per_item.append(ItemCollisions(labels.get(digest, digest[:12]), int(rows.size), int(hit.sum()), pairs))
    return CollisionReport(
        new.name, against, len(pn), int(colliding.sum()), pairs_total, per_item, np.flatnonzero(colliding)
    )


def plot_collisions(report: CollisionReport, new: Species, existing: list[Species], path: str | Path, labels: dict[str, str] | None = None) -> Path:
    """PNG overview: collisions per item (bars) and the x/y positions in the
    items with most collisions (existing grey, new blue, colliding red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or {}
    inv = {v: k for k, v in labels.items()}
    items = sorted(report.per_item, key=lambda c: (-c.colliding, -c.new))[:4]
    fig, axes = plt.subplots(1, 1 + len(items), figsize=(4 * (1 + len(items)), 4), squeeze=False)
    ax = axes[0, 0]
    names = [c.item for c in report.per_item]
    ax.bar(range(len(names)), [c.new for c in report.per_item], color="#9ecae1", label="new particles")
    ax.bar(range(len(names)), [c.colliding for c in report.per_item], color="#de2d26", label="colliding")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=6)
    ax.set_title(f"{report.species}: {report.colliding} of {report.total} collide")
    ax.legend(fontsize=7)
    pos = centres(new)
    coll = np.zeros(len(new.particles), bool)
    coll[report.colliding_index] = True
    for a, c in zip(axes[0, 1:], items):
        digest = inv.get(c.item, next((d for d in new.particles.items if d.startswith(c.item)), None))
        if digest is None:
            continue
        for sp in existing:
            if sp.name == new.name or digest not in sp.particles.items:
                continue
            rows = sp.particles.in_item(digest)
            p = centres(sp)[rows]
            a.scatter(p[:, 0], p[:, 1], s=6, c="0.6", label=sp.name)
        rows = new.particles.in_item(digest)
        a.scatter(pos[rows, 0], pos[rows, 1], s=6, c=np.where(coll[rows], "#de2d26", "#3182bd"))
        a.set_title(f"{c.item}: {c.colliding}/{c.new}", fontsize=8)
        a.set_xlabel("x (Å)")
        a.set_ylabel("y (Å)")
        a.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
