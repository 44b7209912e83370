"""Benchmark: import of a RELION STAR of 1,000,000 particles and export again.

Builds, in a temporary folder, a repository with 1,000 frame-series items and
a RELION 3.1 particles STAR (optics + particles, 17 columns) of N particles
over them (written by the ``starfile`` package), then measures in the same run:

* baseline: ``starfile.read`` + ``starfile.write`` of that file;
* ``mrepo.io.relion_import.import_relion`` (read, match to items, commit);
* ``repo.population()`` + loading every particle column (read back);
* ``mrepo.io.relion_export.export_relion`` (particles STAR + maps).

Prints seconds, particles per second, peak memory and the ratios to the
baseline (target: import + commit within 2x of starfile read + write).

    python benchmarks/bench_import.py [--particles 1000000] [--items 1000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

import mrepo
from mrepo.io.mrc import write_mrc
from mrepo.io.relion_export import export_relion
from mrepo.io.relion_import import import_relion
from mrepo.model import DataSource, ImagingModel, Item, Population, array_content_digest, write_item, write_population


def make_items(repo: mrepo.Repository, n_items: int, px: float) -> list[str]:
    rng = np.random.default_rng(0)
    txn = repo.transaction()
    src = DataSource("movies", "frames")
    names = []
    for i in range(n_items):
        raw = rng.normal(size=(2, 16, 16)).astype(np.float32)
        it = Item(f"mic_{i:05d}", "frames", array_content_digest(raw), raw.shape, ImagingModel(px), np.array([0.0, 1.0]), np.ones(2))
        src.add(it)
        write_item(txn, "movies", it, raw=raw)
        names.append(it.name)
    write_population(txn, Population("bench", {"movies": src}), items=False)
    txn.commit("items")
    txn.discard()
    return names


def make_star(path: Path, names: list[str], n: int, px: float) -> None:
    rng = np.random.default_rng(1)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnAmplitudeContrast": [0.1],
                           "rlnSphericalAberration": [2.7], "rlnVoltage": [300.0], "rlnImagePixelSize": [px],
                           "rlnMicrographOriginalPixelSize": [px], "rlnImageSize": [256], "rlnImageDimensionality": [2]})
    mics = np.array([f"MotionCorr/job002/Movies/{m}.mrc" for m in names])
    parts = pd.DataFrame({
        "rlnCoordinateX": rng.uniform(0, 4000, n).round(6), "rlnCoordinateY": rng.uniform(0, 4000, n).round(6),
        "rlnAngleRot": rng.uniform(-180, 180, n).round(6), "rlnAngleTilt": rng.uniform(0, 180, n).round(6),
        "rlnAnglePsi": rng.uniform(-180, 180, n).round(6),
        "rlnOriginXAngst": rng.normal(0, 2, n).round(6), "rlnOriginYAngst": rng.normal(0, 2, n).round(6),
        "rlnDefocusU": rng.uniform(10000, 20000, n).round(6), "rlnDefocusV": rng.uniform(10000, 20000, n).round(6),
        "rlnDefocusAngle": rng.uniform(0, 180, n).round(6),
        "rlnImageName": [f"{i % 1000 + 1:06d}@Extract/job007/Movies/{m}.mrcs" for i, m in enumerate(names[j] for j in (np.arange(n) * len(names)) // n)],
        "rlnMicrographName": mics[(np.arange(n) * len(names)) // n],
        "rlnOpticsGroup": np.ones(n, int), "rlnRandomSubset": rng.integers(1, 3, n), "rlnClassNumber": np.ones(n, int),
        "rlnLogLikeliContribution": rng.normal(size=n).round(6), "rlnNormCorrection": rng.uniform(0.8, 1.2, n).round(6),
    })
    starfile.write({"optics": optics, "particles": parts}, path)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=1000)
    args = ap.parse_args()
    px = 1.0
    with tempfile.TemporaryDirectory(prefix="bench_import_") as d:
        root = Path(d)
        repo = mrepo.init_repo(root / "repo")
        t = time.perf_counter()
        names = make_items(repo, args.items, px)
        make_star(root / "run_data.star", names, args.particles, px)
        vol = np.random.default_rng(2).normal(size=(64, 64, 64)).astype(np.float32)
        write_mrc(root / "h1.mrc", vol, px)
        write_mrc(root / "h2.mrc", vol, px)
        size = (root / "run_data.star").stat().st_size
        print(f"setup: {args.items} items, STAR of {args.particles} particles ({size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s",
              file=sys.stderr)

        t = time.perf_counter()
        data = starfile.read(root / "run_data.star")
        t_read = time.perf_counter() - t
        t = time.perf_counter()
        starfile.write(data, root / "again.star")
        t_write = time.perf_counter() - t
        del data
        base = t_read + t_write

        t = time.perf_counter()
        rep = import_relion(repo, root / "run_data.star", root / "h1.mrc", root / "h2.mrc", species="bench", diameter_angstrom=150)
        t_import = time.perf_counter() - t
        assert rep.particles == args.particles

        t = time.perf_counter()
        sp = repo.population("HEAD", grids=False).species["bench"]
        p = sp.particles.load()
        t_readback = time.perf_counter() - t
        assert len(p) == args.particles and p.coordinates.shape == (args.particles, 1, 3)

        t = time.perf_counter()
        export_relion(repo, "HEAD", "bench", root / "export")
        t_export = time.perf_counter() - t

        n = args.particles
        print(f"particles                       {n}")
        print(f"starfile.read                   {t_read:8.2f} s")
        print(f"starfile.write                  {t_write:8.2f} s")
        print(f"baseline read + write           {base:8.2f} s")
        print(f"mrepo import relion + commit    {t_import:8.2f} s   {n / t_import:10.0f} particles/s   ratio to baseline {t_import / base:.2f}x (target <= 2x)")
        print(f"read back (population + load)   {t_readback:8.2f} s")
        print(f"mrepo export relion             {t_export:8.2f} s   ratio to starfile.write {t_export / t_write:.2f}x")
        print(f"import + export                 {t_import + t_export:8.2f} s   ratio to baseline {(t_import + t_export) / base:.2f}x")
        print(f"peak memory (RSS)               {peak_mib():8.0f} MiB")


if __name__ == "__main__":
    main()
