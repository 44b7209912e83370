"""A species: one macromolecule or state, with maps, particles and metrics."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput
from .particles import Particles

__all__ = ["Species", "check_symmetry"]

_SYM = re.compile(r"^(C\d+|D\d+|T|O|I[1-4]?)$")


def check_symmetry(sym: str) -> str:
    s = sym.strip().upper()
    if not _SYM.match(s):
        raise InvalidInput("unknown point-group symmetry (use C1, Cn, Dn, T, O or I)", sym)
    return s


@dataclass(eq=False)
class Species:
    """A species.

    Attributes
    ----------
    name:
        Unique name in the population (a path component).
    diameter_angstrom:
        Particle diameter in Å (collision checks, masks).
    pixel_size_angstrom, box:
        Sampling of the maps: voxel size in Å and box edge in voxels.
    symmetry:
        Point group (RELION notation, e.g. ``C1``, ``D2``, ``O``).
    particles:
        The particle table.
    maps:
        Role -> array name in the repository (``half1``, ``half2``, ``mask``,
        ``denoised_half1``...).
    resolution_angstrom:
        Global resolution (FSC 0.143) when known.
    contributors:
        Item data digest -> item provenance digest of the items whose
        particles built the current maps.
    denoiser:
        Description of the denoiser (architecture, iterations, array names of
        its weights) when the species has one.
    metrics:
        Anything measured (FSC curves as lists, scores).
    """

    name: str
    diameter_angstrom: float
    pixel_size_angstrom: float
    box: int
    particles: Particles
    symmetry: str = "C1"
    maps: dict[str, str] = field(default_factory=dict)
    resolution_angstrom: float | None = None
    contributors: dict[str, str] = field(default_factory=dict)
    denoiser: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.symmetry = check_symmetry(self.symmetry)
        if not self.diameter_angstrom > 0:
            raise InvalidInput("species diameter must be positive (Å)", self.name)
        if not self.pixel_size_angstrom > 0:
            raise InvalidInput("species pixel size must be positive (Å)", self.name)
        if int(self.box) < 2:
            raise InvalidInput("species box must be at least 2 voxels", self.name)
        self.box = int(self.box)
        # plain floats: 100 and 100.0 must give the same species digest (mrepo.model.provenance)
        self.diameter_angstrom = float(self.diameter_angstrom)
        self.pixel_size_angstrom = float(self.pixel_size_angstrom)
