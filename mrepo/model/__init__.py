"""The M data model: population, data sources, items, species, particles.

Typed, validated dataclasses (DESIGN.md §1) and their layout in a repository
(:mod:`mrepo.model.population`). Knows the store, nothing of refinement.
"""

from .digests import array_content_digest, json_digest
from .grids import MOTION_GRID_PAIRS, CubicGrid, motion_grid_pairs, motion_shifts, natural_spline_weights, pyramid_grid_names
from .imaging import ImagingModel
from .item import Item, defocus_at
from .particles import Particles
from .population import (
    Population,
    VerifyProblem,
    read_population,
    verify_population,
    write_item,
    write_population,
    write_species,
)
from .provenance import item_digest, particles_digest, species_digest
from .source import DataSource
from .species import Species

__all__ = [
    "CubicGrid",
    "defocus_at",
    "MOTION_GRID_PAIRS",
    "motion_grid_pairs",
    "motion_shifts",
    "natural_spline_weights",
    "pyramid_grid_names",
    "DataSource",
    "ImagingModel",
    "Item",
    "Particles",
    "Population",
    "Species",
    "VerifyProblem",
    "array_content_digest",
    "item_digest",
    "json_digest",
    "particles_digest",
    "read_population",
    "species_digest",
    "verify_population",
    "write_item",
    "write_population",
    "write_species",
]
