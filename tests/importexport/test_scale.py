"""1,000,000 particles with 3 temporal samples: commit and read back in reasonable time and memory."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from conftest import add_items

from mrepo.model import Particles, Species
from mrepo.model.population import species_array_name
from mrepo.io.popio import load_population
from mrepo.model import write_population
from mrepo.store import write_array


@pytest.mark.slow
def test_million_particles_three_samples(repo):
    items = add_items(repo, [f"mic_{i:04d}" for i in range(200)])
    digests = [it.data_digest for it in items.values()]
    n, t = 1_000_000, 3
    rng = np.random.default_rng(0)
    tracemalloc.start()
    t0 = time.perf_counter()
    parts = Particles(
        digests,
        rng.integers(0, len(digests), n).astype(np.int32),
        rng.uniform(0, 4000, (n, t, 3)).astype(np.float32),
        rng.uniform(-180, 180, (n, t, 3)).astype(np.float32),
        rng.integers(1, 3, n).astype(np.int8),
        {"defocus_u_angstrom": rng.uniform(1e4, 2e4, n).astype(np.float32), "optics_group": np.ones(n, np.int32)},
    )
    txn = repo.transaction()
    pop = load_population(txn)
    vol = np.zeros((32, 32, 32), np.float32)
    maps = {}
    for role in ("half1", "half2"):
        maps[role] = species_array_name("big", f"maps/{role}")
        write_array(txn, maps[role], vol)
    pop.species["big"] = Species("big", 150.0, 1.0, 32, parts, maps=maps)
    write_population(txn, pop, items=False, species=["big"])
    sha = txn.commit("1M particles")
    txn.discard()
    t_commit = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = repo.population(sha, grids=False).species["big"].particles.load()
    t_read = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"1M particles x 3 samples: commit {t_commit:.1f} s, read {t_read:.1f} s, peak traced memory {peak / 2**20:.0f} MiB")
    assert back == parts
    assert t_commit < 60 and t_read < 20
    assert peak < 1024 * 2**20  # the columns themselves are ~100 MiB
    assert repo.verify(sha, raw=False) == []
