"""Helpers for the import/export tests."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mrepo.model import DataSource, ImagingModel, Item, Population, array_content_digest, write_item, write_population  # noqa: E402


def add_items(repo, names, *, kind="frames", source="src", px=1.0, n=2, shape=(16, 16), dims_angstrom=None, m_hashes=None):
    """Commit items named ``names`` (tiny random raw data) into ``source``; returns {name: Item}."""
    rng = np.random.default_rng(len(names))
    txn = repo.transaction()
    from mrepo.io.popio import load_population

    pop = load_population(txn, name="test")
    src = pop.sources.get(source) or DataSource(source, kind)
    pop.sources[source] = src
    out = {}
    for i, name in enumerate(names):
        raw = rng.normal(size=(n, *shape)).astype(np.float32)
        kw = {"tilt_angles_deg": np.linspace(-60, 60, n)} if kind == "tilts" else {}
        extra = {"volume_dimensions_angstrom": list(dims_angstrom)} if dims_angstrom is not None else {}
        it = Item(name, kind, array_content_digest(raw), raw.shape, ImagingModel(px), np.arange(n, dtype=float) * 3, np.full(n, 3.0),
                  m_hash=(m_hashes or {}).get(name), extra=extra, **kw)
        src.add(it)
        write_item(txn, source, it, raw=raw)
        out[name] = it
    write_population(txn, pop, items=False, species=False)
    txn.commit(f"{len(names)} items")
    txn.discard()
    return out


def leftover_transactions(repo) -> list[str]:
    """Transactions other than the CLI index left in the repository."""
    d = Path(repo.mrepo_dir) / "txn"
    return sorted(p.name for p in d.iterdir() if p.name != "index") if d.exists() else []


@pytest.fixture
def relion_bin():
    if shutil.which("relion_star_printtable") is None:
        pytest.skip("RELION not installed")
    return True
