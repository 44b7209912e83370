"""Small synthetic populations for the collab tests, built through the model API."""

from __future__ import annotations

import numpy as np

from mrepo.model import DataSource, ImagingModel, Item, Particles, Population, Species, array_content_digest, write_item, write_population, write_species
from mrepo.model.population import read_population
from mrepo.store import write_array

ITEM_SIZE_ANGSTROM = 1000.0


def make_population(repo, *, n_items: int = 3, frames: int = 2, px: int = 32, seed: int = 0, species: dict | None = None) -> str:
    """Commit a population: source ``frames1`` with ``n_items`` items and the
    given species (name -> number of particles, default {'A': 200}). Returns the commit."""
    rng = np.random.default_rng(seed)
    txn = repo.transaction()
    src = DataSource("frames1", "frames")
    for i in range(n_items):
        raw = rng.normal(size=(frames, px, px)).astype(np.float32)
        item = Item(
            name=f"movie_{i:03d}",
            kind="frames",
            data_digest=array_content_digest(raw),
            shape=raw.shape,
            imaging=ImagingModel(pixel_size_angstrom=1.0, defocus_angstrom=15000.0 + 100 * i),
            pre_exposure=np.arange(frames) * 1.5,
            dose=np.full(frames, 1.5),
        )
        write_item(txn, "frames1", item, raw=raw)
        src.add(item)
    pop = Population("shared", {"frames1": src}, {})
    for name, n in (species if species is not None else {"A": 200}).items():
        pop.species[name] = add_species(txn, pop, name, n, seed=seed + hash(name) % 1000)
    write_population(txn, pop, items=False)
    sha = txn.commit("population")
    txn.discard()
    return sha


def add_species(txn, pop: Population, name: str, n: int, *, seed: int = 1, diameter: float = 100.0, coords: np.ndarray | None = None, items: list[str] | None = None, box: int = 16) -> Species:
    """Stage species ``name`` with ``n`` particles (random or given coordinates, Å)."""
    rng = np.random.default_rng(seed)
    digests = [it.data_digest for _, it in pop.items()]
    if items is None:
        items = [digests[i % len(digests)] for i in range(n)]
    if coords is None:
        coords = rng.uniform(0, ITEM_SIZE_ANGSTROM, size=(n, 3))
    half1 = rng.normal(size=(box, box, box)).astype(np.float32)
    write_array(txn, f"species/{name}/maps/half1", half1)
    write_array(txn, f"species/{name}/maps/half2", half1 + 0.01)
    parts = Particles.from_arrays(items, coords, rng.uniform(-180, 180, size=(n, 3)), rng.integers(1, 3, n))
    sp = Species(name, diameter, 2.0, box, parts, maps={"half1": f"species/{name}/maps/half1", "half2": f"species/{name}/maps/half2"})
    write_species(txn, sp)
    return sp


def add_species_commit(repo, name: str, n: int, **kw) -> str:
    """Commit a new species on the current branch (and update population.json)."""
    txn = repo.transaction()
    pop = read_population(txn)
    pop.species[name] = add_species(txn, pop, name, n, **kw)
    write_population(txn, pop, items=False)
    sha = txn.commit(f"add species {name}")
    txn.discard()
    return sha


def refine_species(repo, name: str, *, seed: int = 5) -> str:
    """Change species ``name``'s maps and particle positions (a refinement)."""
    rng = np.random.default_rng(seed)
    txn = repo.transaction()
    pop = read_population(txn)
    sp = pop.species[name]
    p = sp.particles.load()
    p.coordinates = p.coordinates + rng.normal(scale=0.5, size=p.coordinates.shape).astype(np.float32)
    sp.particles = p
    h = np.asarray(repo.open_array(repo.head().commit, sp.maps["half1"])[...])
    write_array(txn, sp.maps["half1"], h * 1.01)
    write_array(txn, sp.maps["half2"], h * 0.99)
    sp.resolution_angstrom = 4.2
    write_population(txn, pop, items=False)
    sha = txn.commit(f"refine species {name}")
    txn.discard()
    return sha
