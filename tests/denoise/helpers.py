"""Shared helpers for the denoiser tests: a small population whose species has simulated half-maps."""

from __future__ import annotations

import numpy as np

from mrepo.model import DataSource, ImagingModel, Item, Particles, Population, Species, array_content_digest, write_item, write_population
from mrepo.refine.phantom import PhantomMaps, pseudo_atomic_phantom
from mrepo.store import write_array

# small and quick: 32³ maps of a 2-domain phantom at 1.6 Å/px
BOX = 32
PIXEL = 1.6


def small_phantom(seed: int = 0, noise_std: float = 0.7) -> PhantomMaps:
    return pseudo_atomic_phantom(
        BOX, PIXEL, core_radii_angstrom=(11.0, 9.0, 9.0), domain_radii_angstrom=(6.0, 6.0, 6.0),
        atom_density=1 / 40, atom_sigma_angstrom=1.2, flex_shift_angstrom=1.5, subsets=6, noise_std=noise_std, seed=seed,
    )


def make_population(repo, *, with_maps: bool = True, phantom: PhantomMaps | None = None, species: str = "apo"):
    """Commit a population with one item and one species (half-maps from ``phantom``)."""
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(2, 16, 16)).astype(np.float32)
    item = Item(
        name="movie_001", kind="frames", data_digest=array_content_digest(raw), shape=raw.shape,
        imaging=ImagingModel(pixel_size_angstrom=PIXEL, defocus_angstrom=12000.0),
        pre_exposure=np.arange(2) * 1.5, dose=np.full(2, 1.5),
    )
    src = DataSource("frames1", "frames")
    src.add(item)
    txn = repo.index
    write_item(txn, "frames1", item, raw=raw)
    maps = {}
    if with_maps:
        p = phantom or small_phantom()
        attrs = {"voxel_size": [PIXEL] * 3, "voxel_size_unit": "angstrom"}
        for role, vol in (("half1", p.half1), ("half2", p.half2)):
            name = f"species/{species}/maps/{role}"
            write_array(txn, name, vol, attributes=attrs)
            maps[role] = name
    n = 20
    parts = Particles.from_arrays([item.data_digest] * n, rng.uniform(0, 20, size=(n, 3)), rng.uniform(-180, 180, size=(n, 3)),
                                  np.arange(n) % 2 + 1)
    sp = Species(species, 44.0, PIXEL, BOX, parts, maps=maps)
    pop = Population("test", {"frames1": src}, {species: sp})
    write_population(txn, pop, items=False)
    return txn.commit("population")
