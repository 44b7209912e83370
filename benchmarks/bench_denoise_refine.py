"""Benchmark: refinement with and without the noise2noise denoiser, on a species with a flexible domain.

Simulates a population (``small`` preset by default) whose first species
(``large``) has a flexible domain (:mod:`mrepo.sim.flexible`: a quarter of
each asymmetric unit's atoms takes one of 8 rigid poses per particle, RMS
displacement 4 Å by default), then runs, from the same starting commit,

* ``mrepo refine`` with ``RefineOptions(iterations=N, denoise=True)``: the
  references are the species' noise2noise-denoised half-maps, and
* the same with ``denoise=False``: the references are the half-maps weighted
  by ``sqrt(2 FSC / (1 + FSC))`` per shell,

and prints side by side, per species: the resolution (FSC 0.143 between the
half-maps, masked) at the start and after refinement, and the FSC 0.5
resolution of the average map against the true map; and for the flexible
species the correlation with the true map (the noise-free mean over the
particles' conformations) inside the core mask and inside the flexible-domain
mask of (a) refined half-map 1 and the average of the two halves and (b) the
reference that refinement used (denoised or FSC-weighted; for the refined
state: what the next iteration would use); plus the wall time of each run.
Every figure is measured in this run.

Usage::

    python benchmarks/bench_denoise_refine.py [--preset small] [--seed 0] [--iterations 3]
        [--flexible-angstrom 4] [--flexible-fraction 0.25] [--conformations 8]
        [--sim DIR] [--work DIR] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mrepo  # noqa: E402
from mrepo.errors import DegenerateResult  # noqa: E402
from mrepo.refine.fsc import resolution_at  # noqa: E402
from mrepo.refine.run import RefineOptions, fsc_weighted, masked_fsc, refine_repository  # noqa: E402
from mrepo.sim import domain_correlation, load_truth, preset, simulate  # noqa: E402
from mrepo.sim.reconstruct import fsc_to_truth  # noqa: E402


def _res(curve, threshold: float) -> float:
    try:
        return float(resolution_at(curve, threshold))
    except DegenerateResult:
        return float("nan")


def maps_figures(truth, species: str, h1: np.ndarray, h2: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> dict:
    """Correlations (core / domain, against the average true map) and FSC-to-truth of half-maps and references."""
    px = truth.pixel_size_angstrom
    diameter = truth.species[species].diameter_angstrom
    avg, ravg = 0.5 * (h1 + h2), 0.5 * (r1 + r2)
    out = {"fsc05_to_truth_angstrom": _res(fsc_to_truth(avg, truth.maps[species], px, diameter), 0.5)}
    if species in truth.flexible:
        out["half1"] = domain_correlation(h1, truth, species)
        out["average"] = domain_correlation(avg, truth, species)
        out["reference_half1"] = domain_correlation(r1, truth, species)
        out["reference_average"] = domain_correlation(ravg, truth, species)
        out["average_vs_rest"] = domain_correlation(avg, truth, species, against="rest")
        out["reference_average_vs_rest"] = domain_correlation(ravg, truth, species, against="rest")
    return out


def start_figures(sim: Path, truth) -> dict:
    """The starting half-maps (as simulated) and their FSC-weighted versions."""
    repo = mrepo.open_repo(sim)
    pop = repo.population("HEAD")
    out = {}
    for n, sp in pop.species.items():
        h1 = np.asarray(repo.open_array("HEAD", sp.maps["half1"])[...], np.float32)
        h2 = np.asarray(repo.open_array("HEAD", sp.maps["half2"])[...], np.float32)
        c = masked_fsc(h1, h2, sp.pixel_size_angstrom, sp.diameter_angstrom)
        out[n] = {"resolution": _res(c, 0.143),
                  **maps_figures(truth, n, h1, h2, fsc_weighted(h1, c), fsc_weighted(h2, c))}
    return out


def run_mode(sim: Path, work: Path, denoise: bool, iterations: int) -> dict:
    label = "denoised" if denoise else "fsc_weighted"
    d = work / label
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(sim, d, symlinks=True)
    repo = mrepo.open_repo(d)
    truth = load_truth(d)
    print(f"\nrefine, {iterations} iterations, denoise={denoise}", flush=True)
    t0 = time.perf_counter()
    out = refine_repository(repo, RefineOptions(iterations=iterations, denoise=denoise),
                            progress=lambda m: print("   ", m, flush=True))
    seconds = time.perf_counter() - t0
    pop = repo.population("HEAD")
    species = {}
    for n, s in out.species.items():
        h1, h2 = (np.asarray(v, np.float32) for v in out.maps[n])
        sp = pop.species[n]
        if denoise:
            r1 = np.asarray(repo.open_array("HEAD", sp.maps["denoised_half1"])[...], np.float32)
            r2 = np.asarray(repo.open_array("HEAD", sp.maps["denoised_half2"])[...], np.float32)
        else:
            r1, r2 = fsc_weighted(h1, s.fsc_after), fsc_weighted(h2, s.fsc_after)
        species[n] = {"resolution_start": s.resolution_before, "resolution": s.resolution_after,
                      **maps_figures(truth, n, h1, h2, r1, r2)}
    return {"denoise": denoise, "seconds": seconds, "commit": out.commit, "species": species}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--flexible-angstrom", type=float, default=4.0, help="RMS displacement of the domain's atoms (Å)")
    ap.add_argument("--flexible-fraction", type=float, default=0.25, help="share of each asymmetric unit's atoms")
    ap.add_argument("--conformations", type=int, default=8)
    ap.add_argument("--flexible-species", default=None, help="default: the first species (large)")
    ap.add_argument("--sim", type=Path, help="reuse this simulation (made with the flexible domain)")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    tmp = None
    work = a.work
    if work is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench_denoise_refine_"))
        work = tmp
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    figures: dict = {"preset": a.preset, "seed": a.seed, "iterations": a.iterations, "cpu_count": os.cpu_count(),
                     "load_average_1min_at_start": load}
    try:
        sim = a.sim
        if sim is None:
            sim = work / "sim"
            if sim.exists():
                shutil.rmtree(sim)
            cfg = preset(a.preset, flexible_angstrom=a.flexible_angstrom, flexible_fraction=a.flexible_fraction,
                         flexible_conformations=a.conformations, flexible_species=a.flexible_species)
            print(f"simulating preset {a.preset!r}, seed {a.seed}, flexible domain {a.flexible_angstrom:g} Å RMS "
                  f"({a.flexible_fraction:g} of the atoms, {a.conformations} conformations) ...", flush=True)
            t0 = time.perf_counter()
            simulate(sim, config=cfg, seed=a.seed, progress=False)
            figures["simulation_seconds"] = time.perf_counter() - t0
        truth = load_truth(sim)
        if not truth.flexible:
            raise SystemExit("this simulation has no flexible domain (simulate with flexible_angstrom > 0)")
        figures["flexible"] = {n: truth.summary["species"][n].get("flexible") for n in truth.flexible}
        figures["start"] = start_figures(sim, truth)
        runs = {m: run_mode(sim, work, m, a.iterations) for m in (True, False)}
        figures["denoised"], figures["fsc_weighted"] = runs[True], runs[False]

        den, fw, st = runs[True]["species"], runs[False]["species"], figures["start"]
        names = sorted(den)
        print(f"\npreset {a.preset}, seed {a.seed}, {a.iterations} iterations; flexible domain: "
              + "; ".join(f"{n}: {f['fraction']:g} of the atoms, {f['measured_rms_angstrom']:.2f} Å RMS, "
                          f"{f['conformations']} conformations" for n, f in figures["flexible"].items()))
        print(f"{os.cpu_count()} CPU cores, load average at start {load:.2f}")
        print("\nresolution (Å): FSC 0.143 between half-maps, start -> refined (start: reconstructed by refine at the "
              "starting parameters); FSC 0.5 of the average map against the truth")
        print(f"{'species':<10}{'denoise=True':>16}{'denoise=False':>16}   {'truth 0.5: start':>17}{'denoise=True':>14}"
              f"{'denoise=False':>15}")
        for n in names:
            cells = [f"{x[n]['resolution_start']:.2f} -> {x[n]['resolution']:.2f}" for x in (den, fw)]
            print(f"{n:<10}{cells[0]:>16}{cells[1]:>16}   {st[n]['fsc05_to_truth_angstrom']:>17.2f}"
                  f"{den[n]['fsc05_to_truth_angstrom']:>14.2f}{fw[n]['fsc05_to_truth_angstrom']:>15.2f}")
        for n in sorted(truth.flexible):
            print(f"\ncorrelation with the true map of {n} (mean over the particles' conformations): core / flexible domain")
            print(f"{'map':<34}{'start':>15}{'denoise=True':>17}{'denoise=False':>17}")
            for key, label in (("half1", "(a) half-map 1"), ("average", "(a) average of the halves"),
                               ("reference_half1", "(b) reference, half 1"), ("reference_average", "(b) reference, average")):
                cells = [f"{x[n][key]['core']:.3f} / {x[n][key]['domain']:.3f}" for x in (st, den, fw)]
                print(f"{label:<34}{cells[0]:>15}{cells[1]:>17}{cells[2]:>17}")
            print("(start: the simulated starting half-maps; their reference = FSC-weighted; a refined run's reference is "
                  "what its next iteration would use: the denoised halves, or the FSC-weighted halves)")
        print(f"\nwall time: denoise=True {runs[True]['seconds']:.0f} s, denoise=False {runs[False]['seconds']:.0f} s")
        if a.json:
            a.json.write_text(json.dumps(figures, indent=1, default=str))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
