"""Benchmark: `mrepo refine` on a simulated population with known truth, and RELION 3.1 polishing beside it.

Prints, for the ``small`` preset (seed 0 by default):

1. **Refinement against the truth.** Per species: resolution (FSC 0.143 between
   half-maps, soft spherical mask) of the starting, refined and oracle
   (true-parameter) reconstructions; RMS per-frame particle position error
   (px, motion and poses together, and motion only: each particle's mean
   offset removed) and orientation error (deg) before and after; wall time.
2. **Target throughput.** One evaluation of target + gradient at a 128 px box,
   in particle-frames per second, against a straightforward per-particle,
   per-frame loop over the same projector, measured in the same run.
3. **Memory.** Peak RSS of one series' extraction and refinement (in a fresh
   process) against the size of its raw frames.
4. **Multi-species benefit** (Extended Data Fig. 2 of the M paper): a species
   with 5% of the particles refined alone and co-refined with a 95% species;
   each is reconstructed from its own particles only.
5. **The peer.** RELION 3.1's Bayesian polishing (``relion_motion_refine``) on the
   same simulated movies, exported as a RELION project
   (:mod:`mrepo.sim.relion_polish`): motion error, resolution and wall time
   side by side with mrepo's.

Usage::

    python benchmarks/bench_refine.py [--preset small] [--seed 0] [--sim DIR] [--iterations 3]
        [--work DIR] [--skip-relion] [--skip-multispecies] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mrepo  # noqa: E402
from mrepo.refine.run import RefineOptions, apply_models, collect_series, reconstruct_population, refine_repository  # noqa: E402
from mrepo.sim import fsc_to_truth, load_truth, motion_rmse_px, pose_error_deg, preset, simulate  # noqa: E402
from mrepo.sim.truth import truth_population  # noqa: E402


def _res(curve, t=0.143) -> float:
    try:
        return float(curve.resolution(t))
    except Exception:
        return float("nan")


def _refined_population(repo, out, names):
    """The population at HEAD with a (not committed) refinement's models applied."""
    pop = copy.deepcopy(repo.population("HEAD"))
    parts = {n: pop.species[n].particles.load() for n in names}
    series, items_of = collect_series(repo.snapshot("HEAD"), pop, list(names), parts, device=torch.device("cpu"))
    apply_models(pop, parts, series, out.models, items_of, list(names), 1)
    return pop


# ---------------------------------------------------------------------------- 1. against the truth
def refine_vs_truth(sim: Path, work: Path, iterations: int) -> dict:
    d = work / "refined"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(sim, d, symlinks=True)
    repo = mrepo.open_repo(d)
    truth = load_truth(d)
    start = repo.population("HEAD")
    t0 = time.perf_counter()
    out = refine_repository(repo, RefineOptions(iterations=iterations), progress=lambda m: print("   ", m, flush=True))
    t_refine = time.perf_counter() - t0
    refined = repo.population("HEAD")
    t0 = time.perf_counter()
    oracle = reconstruct_population(repo, truth_population(start, truth), rev="HEAD~1")
    t_oracle = time.perf_counter() - t0
    rows = {}
    for n, s in out.species.items():
        rows[n] = {
            "particles": s.particles,
            "resolution_start": s.resolution_before, "resolution_refined": s.resolution_after,
            "resolution_oracle": _res(oracle[n][2]),
            "motion_start_px": motion_rmse_px(start, truth, n), "motion_refined_px": motion_rmse_px(refined, truth, n),
            "motion_only_start_px": motion_rmse_px(start, truth, n, subtract_mean=True),
            "motion_only_refined_px": motion_rmse_px(refined, truth, n, subtract_mean=True),
            "pose_start_deg": pose_error_deg(start, truth, n), "pose_refined_deg": pose_error_deg(refined, truth, n),
        }
    return {"species": rows, "seconds_refine": t_refine, "seconds_oracle": t_oracle, "series": out.series,
            "particle_frames": out.particle_frames, "commit": out.commit, "repo": str(d)}


# ---------------------------------------------------------------------------- 2. throughput
def _synthetic_series(box: int, n_particles: int, n_frames: int, seed: int = 0):
    """A series block of random data at ``box`` px (shapes as extract_series makes them)."""
    from mrepo.refine.dose import dose_crop_frequency, dose_weights
    from mrepo.refine.projection import prepare_volume
    from mrepo.refine.series import SeriesData, SeriesGeometry, SpeciesBlock, SpeciesReference

    g = torch.Generator().manual_seed(seed)
    px = 1.5
    vol = torch.randn((box, box, box), generator=g)
    fv = prepare_volume(vol, px)
    expo = np.arange(n_frames, dtype=np.float64) + 0.5
    geom = SeriesGeometry(n_frames, 2048, 2048, px, expo, [])
    rng = np.random.default_rng(seed)
    coords = np.concatenate([rng.uniform(200, 2800, (n_particles, 1, 2)), np.zeros((n_particles, 1, 1))], -1).astype(np.float32)
    angles = rng.uniform(-180, 180, (n_particles, 1, 3)).astype(np.float32)
    data = torch.complex(torch.randn((n_particles, n_frames, box, box // 2 + 1), generator=g),
                         torch.randn((n_particles, n_frames, box, box // 2 + 1), generator=g))
    block = SpeciesBlock("s", np.arange(n_particles), np.arange(n_particles) % 2, coords, angles,
                         np.round(coords[:, None, 0, :2] / px).repeat(n_frames, 1).astype(np.int64), data,
                         torch.ones((n_particles, 1, box, box // 2 + 1)), box)
    sd = SeriesData("synthetic", "0" * 64, geom, {"s": block}, {box: torch.ones((box, box // 2 + 1))},
                    {box: dose_weights(torch.as_tensor(expo), box, px)}, dose_crop_frequency(torch.as_tensor(expo)))
    ref = SpeciesReference("s", (fv, fv), box, px, "C1", box / 2 - 1)
    return sd, ref, fv


def throughput(box: int = 128, n_particles: int = 64, n_frames: int = 16, loop_particles: int = 2) -> dict:
    from mrepo.refine.deformation import pyramid_shapes
    from mrepo.refine.projection import project_rotations
    from mrepo.refine.series import _block_geometry, initial_model, series_score

    data, ref, fv = _synthetic_series(box, n_particles, n_frames)
    model = initial_model(data, pyramid_shapes(3, (4, 4, 10), n_frames), 1, device="cpu")
    variables = model.pyramid.parameters() + list(model.coord_delta.values()) + list(model.angle_delta.values())
    for v in variables:
        v.requires_grad_(True)

    def vectorised() -> None:
        for v in variables:
            v.grad = None
        series_score(data, {"s": ref}, model).backward()

    vectorised()  # warm-up (and the per-block caches)
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        vectorised()
    t_vec = (time.perf_counter() - t0) / reps
    # the straightforward loop: one projection and one NCC per particle and frame, same projector
    block = data.blocks["s"]
    st_w = (data.whitening[box] ** 2)[None]
    dw = data.dose_w[box]

    def loop() -> None:
        for v in variables:
            v.grad = None
        origin, rots = _block_geometry(data, block, model)
        total = torch.zeros(())
        for p in range(loop_particles):
            for f in range(n_frames):
                proj = project_rotations(ref.halves[int(block.half[p])], rots[p, 0][None], origin[p, f][None], out_box=box,
                                         r_max_px=ref.r_max_px)[0]
                m = proj * block.ctf2[p] * dw[f]
                d = block.data[p, f]
                num = (st_w[0] * (d.real * m.real + d.imag * m.imag)).sum()
                den = torch.sqrt((st_w[0] * (d.real**2 + d.imag**2)).sum() * (st_w[0] * (m.real**2 + m.imag**2)).sum())
                total = total + num / den
        total.backward()

    loop()
    t0 = time.perf_counter()
    loop()
    t_loop = time.perf_counter() - t0
    rate_vec = n_particles * n_frames / t_vec
    rate_loop = loop_particles * n_frames / t_loop
    return {"box": box, "particles": n_particles, "frames": n_frames, "threads": torch.get_num_threads(),
            "vectorised_pf_per_s": rate_vec, "loop_pf_per_s": rate_loop, "ratio": rate_vec / rate_loop}


# ---------------------------------------------------------------------------- 3. memory
_RSS_CHILD = r"""
import json, resource, sys
import numpy as np, torch
import mrepo
from mrepo.refine.deformation import pyramid_shapes
from mrepo.refine.fsc import fsc
from mrepo.refine.run import RefineOptions, _references
from mrepo.refine.series import RefineSettings, extract_series, initial_model, refine_series
from mrepo.store.arrays import open_view_array
repo = mrepo.open_repo(sys.argv[1]); pop = repo.population("HEAD"); names = sorted(pop.species)
snap = repo.snapshot("HEAD")
parts = {n: pop.species[n].particles.load() for n in names}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after imports and the population's metadata
halves = {n: tuple(np.asarray(open_view_array(snap, pop.species[n].maps[h])[...], np.float32) for h in ("half1", "half2")) for n in names}
refs = _references(halves, pop, {n: fsc(*halves[n], pop.species[n].pixel_size_angstrom) for n in names}, RefineOptions(), torch.device("cpu"))
item = next(it for _s, it in pop.items() if it.kind == "frames")
sel = {}
for n in names:
    rows = parts[n].in_item(item.data_digest)
    if rows.size:
        sel[n] = (rows, parts[n].select(np.isin(np.arange(len(parts[n])), rows)))
data = extract_series(item, open_view_array(snap, item.raw_array), sel, {n: pop.species[n].box for n in sel})
refine_series(data, {n: refs[n] for n in sel}, initial_model(data, pyramid_shapes(3, (4, 4, 10), item.n), 1, device="cpu"), RefineSettings())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rss_before_kib": base, "rss_peak_kib": peak, "raw_float32_bytes": int(np.prod(item.shape)) * 4, "item": item.name}))
"""


def series_memory(sim: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(sim)], capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"}
    d = json.loads(r.stdout.strip().splitlines()[-1])
    d["extra_mib"] = (d["rss_peak_kib"] - d["rss_before_kib"]) / 1024
    d["raw_mib"] = d["raw_float32_bytes"] / 2**20
    d["ratio"] = d["extra_mib"] / d["raw_mib"]
    return d


# ---------------------------------------------------------------------------- 4. multi-species
def multispecies(work: Path, name: str, seed: int, iterations: int) -> dict:
    d = work / "multispecies"
    if d.exists():
        shutil.rmtree(d)
    cfg = preset(name, species={"large": 0.95, "rare": 0.05}, n_movies=12, particles_per_movie=48, n_tilt_series=0,
                 local_motion_angstrom=8.0, pose_shift_error_px=0.5, pose_angle_error_deg=1.0)
    t0 = time.perf_counter()
    simulate(d, config=cfg, seed=seed, progress=False)
    t_sim = time.perf_counter() - t0
    repo = mrepo.open_repo(d)
    truth = load_truth(d)
    start = repo.population("HEAD")
    out = {"particles": {n: len(s.particles) for n, s in start.species.items()}, "seconds_sim": t_sim,
           "motion_start_px": motion_rmse_px(start, truth, "rare")}
    for label, names in (("alone", ("rare",)), ("co-refined", ("large", "rare"))):
        t0 = time.perf_counter()
        res = refine_repository(repo, RefineOptions(iterations=iterations, species=names), commit=False)
        pop = _refined_population(repo, res, names)
        h1, h2 = res.maps["rare"]
        vs = fsc_to_truth((h1 + h2) / 2, truth.maps["rare"], truth.pixel_size_angstrom, truth.species["rare"].diameter_angstrom)
        out[label] = {"resolution_start": res.species["rare"].resolution_before,
                      "resolution": res.species["rare"].resolution_after, "truth_fsc0.5": _res(vs, 0.5),
                      "motion_px": motion_rmse_px(pop, truth, "rare"), "seconds": time.perf_counter() - t0}
    return out


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sim", type=Path, help="reuse this simulation (made with `mrepo sim DIR --preset ...`)")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--work", type=Path, help="keep the work here (default: a temporary folder)")
    ap.add_argument("--skip-relion", action="store_true")
    ap.add_argument("--skip-multispecies", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    a = ap.parse_args()
    tmp = None
    work = a.work
    if work is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench_refine_"))
        work = tmp
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"preset": a.preset, "seed": a.seed, "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    try:
        sim = a.sim
        if sim is None:
            sim = work / "sim"
            if sim.exists():
                shutil.rmtree(sim)
            print(f"simulating preset {a.preset!r}, seed {a.seed} ...", flush=True)
            t0 = time.perf_counter()
            simulate(sim, preset=a.preset, seed=a.seed, progress=False)
            figures["seconds_sim"] = time.perf_counter() - t0
        truth = load_truth(sim)
        print(f"\n1. mrepo refine, {a.iterations} iterations (defaults: motion + poses, denoised references)", flush=True)
        r = refine_vs_truth(sim, work, a.iterations)
        figures["refine"] = r
        print(f"\n{'species':<8}{'particles':>10} | {'resolution (Å): start refined oracle':^38} | "
              f"{'position error (px): start refined':^36} | {'motion only (px)':^17} | {'pose (°): start refined':^24}")
        for n, s in r["species"].items():
            gain = (s["resolution_start"] - s["resolution_refined"]) / s["resolution_start"]
            gap = (s["resolution_refined"] - s["resolution_oracle"]) / s["resolution_oracle"]
            print(f"{n:<8}{s['particles']:>10} | {s['resolution_start']:>9.2f}{s['resolution_refined']:>9.2f}{s['resolution_oracle']:>9.2f}"
                  f" ({gain:+.0%} vs start, {gap:+.0%} vs oracle) | {s['motion_start_px']:>12.3f}{s['motion_refined_px']:>10.3f}"
                  f"{'':>14} | {s['motion_only_start_px']:>7.3f}{s['motion_only_refined_px']:>8.3f}  | "
                  f"{s['pose_start_deg']:>10.2f}{s['pose_refined_deg']:>10.2f}")
        print(f"refinement {r['seconds_refine']:.0f} s ({r['series']} series, {r['particle_frames']} particle-frames), "
              f"oracle reconstruction {r['seconds_oracle']:.0f} s")

        print("\n2. target + gradient throughput at 128 px", flush=True)
        tp = throughput()
        figures["throughput"] = tp
        print(f"vectorised {tp['vectorised_pf_per_s']:.0f} particle-frames/s, per-particle loop {tp['loop_pf_per_s']:.1f} "
              f"particle-frames/s: {tp['ratio']:.0f}x ({tp['particles']} particles x {tp['frames']} frames, {tp['threads']} threads)")

        print("\n3. peak memory of one series (fresh process)", flush=True)
        mem = series_memory(sim)
        figures["memory"] = mem
        if "error" in mem:
            print(f"failed: {mem['error']}")
        else:
            print(f"{mem['item']}: +{mem['extra_mib']:.0f} MiB peak RSS for references, extraction and refinement, raw frames "
                  f"{mem['raw_mib']:.0f} MiB as float32: {mem['ratio']:.2f}x")

        if not a.skip_multispecies:
            print("\n4. multi-species benefit (5% species alone vs co-refined with a 95% species)", flush=True)
            ms = multispecies(work, a.preset, a.seed, a.iterations)
            figures["multispecies"] = ms
            print(f"particles {ms['particles']}; rare species start motion error {ms['motion_start_px']:.3f} px")
            for label in ("alone", "co-refined"):
                m = ms[label]
                print(f"  {label:<11} resolution {m['resolution_start']:.2f} -> {m['resolution']:.2f} Å "
                      f"(FSC 0.5 vs truth {m['truth_fsc0.5']:.2f} Å), motion error {m['motion_px']:.3f} px, {m['seconds']:.0f} s")

        if not a.skip_relion:
            print("\n5. RELION 3.1 Bayesian polishing (relion_motion_refine) on the same movies, species 'large'", flush=True)
            if shutil.which("relion_motion_refine") is None:
                print("relion_motion_refine is not on PATH (Debian: apt-get install relion): skipped")
            else:
                from mrepo.sim.relion_polish import compare_with_relion

                rel = compare_with_relion(sim, "large", work_dir=work / "relion")
                figures["relion"] = rel
                m = r["species"]["large"]
                print(f"{'':<22}{'motion error (px)':>20}{'motion only (px)':>18}{'resolution (Å)':>16}{'wall (s)':>10}")
                print(f"{'imported':<22}{rel['motion_before_px']:>20.3f}{rel['motion_before_motion_px']:>18.3f}"
                      f"{rel.get('resolution_before_angstrom') or float('nan'):>16.2f}")
                print(f"{'RELION polishing':<22}{rel['motion_after_px']:>20.3f}{rel['motion_after_motion_px']:>18.3f}"
                      f"{rel['resolution_after_angstrom'] or float('nan'):>16.2f}{rel['wall_polish_s'] + rel['wall_reconstruct_s']:>10.0f}")
                print(f"{'mrepo refine':<22}{m['motion_refined_px']:>20.3f}{m['motion_only_refined_px']:>18.3f}"
                      f"{m['resolution_refined']:>16.2f}{r['seconds_refine']:>10.0f}")
                print("(RELION wall time: polishing + reconstruction of one species; mrepo: the whole refinement of all species)")
        if a.json:
            a.json.write_text(json.dumps(figures, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
