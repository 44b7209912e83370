"""mrepo's reconstruction against the peer, RELION 3.1's ``relion_reconstruct --ctf``, on the same particles.

Both programs get the same simulated particles (:mod:`mrepo.sim`): dose-weighted,
motion-corrected, CTF'ed images extracted with the true model, their true
orientations, origins and defocus, written as a RELION 3.1 STAR file and an MRC
stack (:func:`mrepo.sim.relion.write_relion_particles`). RELION reconstructs
from the files (``relion_reconstruct --ctf``; also ``relion_reconstruct_mpi``
with 2 ranks when ``mpirun`` works); mrepo from the same arrays
(:func:`mrepo.refine.backprojection.reconstruct_from_particles`, the same
padding 2, no symmetry). Printed: wall time of each, and the FSC of each map
against the true map (soft spherical mask of the particle's diameter),
resolution at 0.5 and 0.143.

First, a noiseless check that the conventions agree (Euler angles, origin
sign, CTF sign): on noiseless particles both maps must match the truth; a
control with the origins' sign flipped must not.

    python benchmarks/bench_reconstruct_relion.py [--preset small] [--seed 1] [--species large]
        [--sim DIR] [--threads 2] [--keep DIR]

``--sim DIR`` reuses a simulation made with ``mrepo sim DIR --preset small`` (it must have
no beam tilt: this script simulates with ``beam_tilt_sigma_mrad=0``, since neither
export nor ``reconstruct_from_particles`` takes per-particle beam tilt).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mrepo
from mrepo.io.mrc import read_mrc
from mrepo.refine.backprojection import reconstruct_from_particles
from mrepo.refine.fsc import FscCurve, resolution_at
from mrepo.sim import fsc_to_truth, load_truth, preset, simulate
from mrepo.sim.reconstruct import raw_stacks
from mrepo.sim.relion import ParticleImages, extract_particle_images, write_relion_particles


def _res(c: FscCurve, t: float) -> str:
    try:
        return f"{resolution_at(c, t):6.2f} Å"
    except Exception:
        return "   n/a  "


#: Each program runs this many times; the shortest wall time is reported (shared machines are noisy).
REPEAT = 3


def _best(fn, repeat: int):
    runs = [fn() for _ in range(max(1, repeat))]
    return min(r[0] for r in runs), runs[-1][1]


def run_relion(star: Path, out: Path, px: float, *, mpi: int = 0) -> tuple[float, np.ndarray]:
    cmd = ["relion_reconstruct", "--i", str(star), "--o", str(out), "--ctf", "--angpix", f"{px}"]
    if mpi:
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(mpi),
               "relion_reconstruct_mpi", *cmd[1:]]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=star.parent)
    wall = time.perf_counter() - t0
    if r.returncode != 0 or not out.exists():
        raise RuntimeError(f"{' '.join(cmd[:2])} failed ({r.returncode}): {r.stderr.strip()[-400:]}")
    return wall, np.array(read_mrc(out, mmap=False).data, dtype=np.float32)


#: Regularisation of mrepo's division by the summed weights: τ = WIENER × the shell's mean weight
#: (mrepo.sim's default; reconstruct_from_particles' own default, 10⁻³, is also printed).
WIENER = 0.1


def run_mrepo(p: ParticleImages, *, flip: bool = False, wiener: float = WIENER) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    org = -p.origins_angstrom if flip else p.origins_angstrom
    res = reconstruct_from_particles(p.images, p.angles_deg, p.pixel_size_angstrom, shifts_angstrom=org, ctf=p.ctf(),
                                     subsets=np.ones(len(p), np.int64), device="cpu", wiener_relative=wiener)
    return time.perf_counter() - t0, res.half_maps[0]


def compare(label: str, p: ParticleImages, truth, species: str, work: Path, *, mpi_ok: bool) -> dict:
    spec = truth.species[species]
    px = truth.pixel_size_angstrom
    true_map = truth.maps[species]
    star = write_relion_particles(p, work, stem=f"{label}_particles")
    rows = {}
    w, m = _best(lambda: run_mrepo(p), REPEAT)
    rows[f"mrepo (τ {WIENER:g}, {torch.get_num_threads()} threads)"] = (w, fsc_to_truth(m, true_map, px, spec.diameter_angstrom))
    w, m = _best(lambda: run_mrepo(p, wiener=1e-3), REPEAT)
    rows[f"mrepo (τ 0.001, {torch.get_num_threads()} threads)"] = (w, fsc_to_truth(m, true_map, px, spec.diameter_angstrom))
    w, m = _best(lambda: run_relion(star, work / f"{label}_relion.mrc", px), REPEAT)
    rows["relion_reconstruct (1 process)"] = (w, fsc_to_truth(m, true_map, px, spec.diameter_angstrom))
    if mpi_ok:
        try:
            w, m = _best(lambda: run_relion(star, work / f"{label}_relion_mpi.mrc", px, mpi=2), REPEAT)
            rows["relion_reconstruct_mpi (2 ranks)"] = (w, fsc_to_truth(m, true_map, px, spec.diameter_angstrom))
        except RuntimeError as e:
            print(f"  (relion_reconstruct_mpi not usable here: {e})")
    print(f"\n== {label}: {len(p)} particles of '{species}' ({spec.diameter_angstrom:.0f} Å), box {p.images.shape[-1]} px, "
          f"{px:g} Å/px (Nyquist {2 * px:g} Å), C1 ==")
    print(f"  {'program':34s} {'wall*':>8s}   {'FSC=0.5':>9s} {'FSC=0.143':>9s}   FSC vs truth at 1/4, 1/2, 3/4 Nyquist, Nyquist")
    for name, (w, c) in rows.items():
        n = len(c.fsc) - 1
        q = [c.fsc[max(1, int(round(f * n)))] for f in (0.25, 0.5, 0.75, 1.0)]
        print(f"  {name:34s} {w:7.2f}s   {_res(c, 0.5)} {_res(c, 0.143)}   " + "  ".join(f"{v:5.3f}" for v in q))
    print(f"  * shortest of {REPEAT} runs")
    rows["_maps"] = None
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--species", default="large")
    ap.add_argument("--sim", type=Path, help="reuse this simulation folder (made without beam tilt)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for mrepo (RELION: 1 process, or MPI 2)")
    ap.add_argument("--keep", type=Path, help="keep the STAR/MRC files and maps here")
    ap.add_argument("--repeat", type=int, default=REPEAT, help="runs per program; the shortest wall time is printed")
    a = ap.parse_args()
    globals()["REPEAT"] = a.repeat
    if shutil.which("relion_reconstruct") is None:
        sys.exit("RELION not installed (relion_reconstruct not found): nothing to compare with")
    torch.set_num_threads(a.threads)
    mpi_ok = shutil.which("mpirun") is not None and shutil.which("relion_reconstruct_mpi") is not None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; CPUs {os.cpu_count()}; "
          f"{subprocess.run(['relion_reconstruct', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_relion_"))
    work = a.keep or tmp
    work.mkdir(parents=True, exist_ok=True)
    try:
        # 1. conventions: noiseless particles, and a control with the origins' sign flipped
        cfg = preset("tiny", snr=None, n_movies=3, particles_per_movie=24, n_frames=4, n_tilt_series=0,
                     beam_tilt_sigma_mrad=0.0, reconstruct_half_maps=False)
        t0 = time.perf_counter()
        sim = simulate(work / "noiseless", config=cfg, seed=a.seed, progress=False)
        print(f"noiseless simulation ({cfg.name}-derived) in {time.perf_counter() - t0:.1f} s")
        p = extract_particle_images(sim.truth, raw_stacks(sim.repo), a.species, jitter_px=4.0, seed=a.seed)
        print(f"origins: mean |origin| {np.abs(p.origins_angstrom).mean():.2f} Å (particles off-centre by up to 4 px)")
        rows = compare("noiseless", p, sim.truth, a.species, work, mpi_ok=False)
        rows.pop("_maps")
        flipped = ParticleImages(**{**p.__dict__, "origins_angstrom": -p.origins_angstrom})
        star = write_relion_particles(flipped, work, stem="flipped_particles")
        _, m = run_relion(star, work / "flipped_relion.mrc", sim.truth.pixel_size_angstrom)
        c_flip = fsc_to_truth(m, sim.truth.maps[a.species], sim.truth.pixel_size_angstrom,
                              sim.truth.species[a.species].diameter_angstrom)
        _, m2 = run_mrepo(p, flip=True)
        c_flip2 = fsc_to_truth(m2, sim.truth.maps[a.species], sim.truth.pixel_size_angstrom,
                               sim.truth.species[a.species].diameter_angstrom)
        q = len(c_flip.fsc) // 4
        half = len(c_flip.fsc) // 2
        ok = all(c.fsc[1:half + 1].min() > 0.8 for _, c in rows.values())
        flipped_low = max(c_flip.fsc[q], c_flip2.fsc[q]) < 0.5
        print(f"  control, origins negated: FSC vs truth at 1/4 Nyquist RELION {c_flip.fsc[q]:.3f}, "
              f"mrepo {c_flip2.fsc[q]:.3f} (must collapse)")
        print(f"  conventions agree: {'yes' if ok and flipped_low else 'NO'} (each map FSC > 0.8 against the "
              "truth to 1/2 Nyquist on noiseless data, and the negated origins collapse it)")

        # 2. the realistic comparison
        if a.sim:
            truth, repo = load_truth(a.sim), mrepo.open_repo(a.sim)
            print(f"\nusing the simulation in {a.sim}")
        else:
            cfg = preset(a.preset, beam_tilt_sigma_mrad=0.0, n_tilt_series=0, reconstruct_half_maps=False)
            t0 = time.perf_counter()
            sim = simulate(work / a.preset, config=cfg, seed=a.seed, progress=False)
            truth, repo = sim.truth, sim.repo
            print(f"\nsimulated '{a.preset}' (seed {a.seed}, SNR {cfg.snr}, no beam tilt) in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        p = extract_particle_images(truth, raw_stacks(repo), a.species)
        print(f"extracted {len(p)} particles in {time.perf_counter() - t0:.1f} s")
        compare(a.preset, p, truth, a.species, work, mpi_ok=mpi_ok).pop("_maps")
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
