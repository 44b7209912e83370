"""Benchmark: refining the imaging model and the exposure weights, against the truth and RELION 3.1.

On a simulated population (``small`` preset by default: per-particle defocus
offsets, astigmatism, beam tilt, anisotropic magnification, doming and an
anisotropic blur of the first frames, all known) this prints:

1. **Ablation** (as Fig. 4 of the M paper): ``mrepo refine`` from the same
   starting commit with growing parameter groups — motion → + poses → + CTF
   (defocus, astigmatism, beam tilt, magnification) → + weights → + doming —
   and for each the per-species resolution (FSC 0.143 between half-maps) and
   the parameter errors against the truth: per-particle defocus (Å RMS),
   astigmatism (Å), beam tilt (mrad), magnification (Frobenius norm of the
   matrix error), doming (Å RMS), and the wall time.
2. **Exposure weights**: in an extra run with ``--weights-per-series`` (the
   blur's direction differs between series), the fitted anisotropic B-factors
   of each series' first frames against the planted blur (its axis and sign).
3. **The peer**: RELION 3.1's ``relion_ctf_refine`` (per-particle defocus,
   per-micrograph astigmatism, beam tilt) on the same particles exported as
   RELION STAR + stacks (:mod:`mrepo.sim.relion_ctf`): defocus, astigmatism and
   beam-tilt errors against the truth and wall time beside mrepo's.

Usage::

    python benchmarks/bench_refine_imaging.py [--preset small] [--seed 0] [--sim DIR] [--iterations 3]
        [--work DIR] [--skip-relion] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mrepo  # noqa: E402
from mrepo.refine.fsc import resolution_at  # noqa: E402
from mrepo.refine.run import RefineOptions, refine_repository  # noqa: E402
from mrepo.sim.reconstruct import fsc_to_truth  # noqa: E402
from mrepo.sim import (  # noqa: E402
    astigmatism_error,
    beam_tilt_error_mrad,
    defocus_rmse,
    doming_rmse,
    load_truth,
    magnification_error,
    simulate,
)

CTF = ["defocus", "astigmatism", "beamtilt", "magnification"]
STEPS = [
    ("motion", ["motion"]),
    ("+ poses", ["motion", "poses"]),
    ("+ CTF", ["motion", "poses", *CTF]),
    ("+ weights", ["motion", "poses", *CTF, "weights"]),
    ("+ doming", ["motion", "poses", *CTF, "weights", "doming"]),
]


def errors(pop, truth) -> dict:
    out = {"defocus_rmse_angstrom": {n: defocus_rmse(pop, truth, n) for n in pop.species}}
    a = astigmatism_error(pop, truth)
    out["astigmatism_angstrom"] = a.get("magnitude_angstrom", a.get("magnitude"))
    out["astigmatism"] = a
    out["beam_tilt_mrad"] = beam_tilt_error_mrad(pop, truth)
    out["magnification"] = magnification_error(pop, truth)
    out["doming_angstrom"] = doming_rmse(pop, truth)
    return out


def map_vs_truth(repo, truth, rev: str = "HEAD", band: tuple[float, float] = (10.0, 6.0)) -> dict:
    """Per species: the average of the half-maps at ``rev`` against the true map (soft sphere of
    the diameter): resolution at FSC 0.5 and the mean FSC over ``band`` (Å) — smoother than one
    crossing of 0.143, which jumps where the half-map FSC runs near the threshold."""
    out = {}
    pop = repo.population(rev)
    for n, sp in pop.species.items():
        h1, h2 = (np.asarray(repo.open_array(rev, sp.maps[h])[...], np.float32) for h in ("half1", "half2"))
        c = fsc_to_truth((h1 + h2) / 2, truth.maps[n], sp.pixel_size_angstrom, sp.diameter_angstrom)
        f = np.asarray(c.freqs_per_angstrom)
        sel = (f >= 1 / band[0]) & (f <= 1 / band[1])
        out[n] = {"resolution_0.5_angstrom": float(resolution_at(c, 0.5)),
                  "mean_fsc_band": float(np.mean(np.asarray(c.fsc)[sel])) if sel.any() else float("nan")}
    return out


def run_step(sim: Path, work: Path, label: str, params: list[str], iterations: int, per_series: bool = False) -> dict:
    d = work / label.replace("+ ", "plus_").replace(" ", "_")
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(sim, d, symlinks=True)
    repo = mrepo.open_repo(d)
    truth = load_truth(d)
    t0 = time.perf_counter()
    out = refine_repository(repo, RefineOptions(iterations=iterations, params=tuple(params), weights_per_series=per_series,
                                                weights_png=str(d / "weights.png") if "weights" in params else None),
                            progress=lambda m: print("   ", m, flush=True))
    t = time.perf_counter() - t0
    pop = repo.population("HEAD")
    return {"label": label, "params": params, "seconds": t,
            "resolution": {n: s.resolution_after for n, s in out.species.items()},
            "resolution_start": {n: s.resolution_before for n, s in out.species.items()},
            "errors": errors(pop, truth), "vs_truth": map_vs_truth(repo, truth), "weights": out.weights, "imaging": out.imaging, "repo": str(d)}


def weight_axes(step: dict, truth) -> list[dict]:
    """Per series: the planted blur (axis, σ of the first frame) and the fitted ΔB and axis of its first frames."""
    rows = []
    for key, w in (step.get("weights") or {}).items():
        name = key.split("/")[-1]
        it = truth.items.get(name)
        blur = getattr(it, "blur", None) if it is not None else None
        if not blur:
            continue
        sig = np.asarray(blur.get("sigma_angstrom", []), float)
        k = int((sig > 0).sum())
        fitted_angle = np.asarray(w["angle_deg"])[:max(k, 1)]
        delta = np.asarray(w["delta_a2"])
        rows.append({"series": name, "blur_axis_deg": float(blur["angle_deg"]), "blur_frames": k,
                     "planted_delta_a2": [round(4 * math.pi**2 * s * s, 1) for s in sig[:k]],
                     "fitted_delta_a2": [round(float(v), 1) for v in delta[:k]],
                     "fitted_axis_deg": [round(float(v), 1) for v in fitted_angle],
                     "later_delta_a2_median": round(float(np.median(delta[k:])) if len(delta) > k else float("nan"), 1)})
    return rows


def _axis_error(a: float, b: float) -> float:
    return abs((a - b + 90.0) % 180.0 - 90.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sim", type=Path, help="reuse this simulation")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--skip-relion", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    tmp = None
    work = a.work
    if work is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench_imaging_"))
        work = tmp
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"preset": a.preset, "seed": a.seed, "iterations": a.iterations}
    try:
        sim = a.sim
        if sim is None:
            sim = work / "sim"
            if sim.exists():
                shutil.rmtree(sim)
            print(f"simulating preset {a.preset!r}, seed {a.seed} ...", flush=True)
            simulate(sim, preset=a.preset, seed=a.seed, progress=False)
        truth = load_truth(sim)
        start = errors(mrepo.open_repo(sim).population("HEAD"), truth)
        figures["start"] = start
        steps = []
        for label, params in STEPS:
            print(f"\n{label}: mrepo refine --params {','.join(params)} --iterations {a.iterations}", flush=True)
            steps.append(run_step(sim, work, label, params, a.iterations))
        figures["ablation"] = steps
        # the blur direction differs between the series: its recovery needs weights per series
        label, params = "per series", STEPS[3][1]
        print(f"\n{label}: mrepo refine --params {','.join(params)} --weights-per-series --iterations {a.iterations}", flush=True)
        per_series = run_step(sim, work, label, params, a.iterations, per_series=True)
        figures["weights_per_series"] = per_series

        names = sorted(steps[0]["resolution"])
        print("\n1. Ablation (resolution: FSC 0.143 between half-maps, Å; errors against the truth)")
        head = f"{'step':<12}" + "".join(f"{n + ' (Å)':>12}" for n in names)
        head += f"{'defocus (Å)':>13}{'astig (Å)':>11}{'beam tilt':>11}{'mag':>9}{'doming':>9}{'time (s)':>10}"
        print(head)
        first = steps[0]["resolution_start"]
        print(f"{'start':<12}" + "".join(f"{first[n]:>12.2f}" for n in names)
              + f"{np.mean(list(start['defocus_rmse_angstrom'].values())):>13.0f}{start['astigmatism_angstrom']:>11.1f}"
                f"{start['beam_tilt_mrad']:>11.3f}{start['magnification']:>9.4f}{start['doming_angstrom']:>9.0f}")
        for s in steps:
            e = s["errors"]
            print(f"{s['label']:<12}" + "".join(f"{s['resolution'][n]:>12.2f}" for n in names)
                  + f"{np.mean(list(e['defocus_rmse_angstrom'].values())):>13.0f}{e['astigmatism_angstrom']:>11.1f}"
                    f"{e['beam_tilt_mrad']:>11.3f}{e['magnification']:>9.4f}{e['doming_angstrom']:>9.0f}{s['seconds']:>10.0f}")
        print("defocus per species (Å RMS): " + "; ".join(
            f"{s['label']}: " + ", ".join(f"{n} {v:.0f}" for n, v in s["errors"]["defocus_rmse_angstrom"].items()) for s in steps))
        print("(weights: series with the same number of frames share one set, the default)")
        print("maps against the truth (average of the half-maps; FSC 0.5 in Å / mean FSC 10–6 Å): " + "; ".join(
            f"{s['label']}: " + ", ".join(f"{n} {v['resolution_0.5_angstrom']:.2f} Å / {v['mean_fsc_band']:.3f}"
                                          for n, v in s["vs_truth"].items()) for s in steps + [per_series]))

        print("\n2. Exposure weights per series (--weights-per-series) of the first frames against the planted blur")
        print("   resolution: " + ", ".join(f"{n} {per_series['resolution'][n]:.2f} Å" for n in names)
              + f" (pooled weights: " + ", ".join(f"{n} {steps[3]['resolution'][n]:.2f} Å" for n in names) + ")")
        axes = weight_axes(per_series, truth)
        figures["weights_vs_blur"] = axes
        for r in axes:
            err = [_axis_error(x, r["blur_axis_deg"]) for x in r["fitted_axis_deg"]]
            print(f"  {r['series']}: blur axis {r['blur_axis_deg']:.0f}°, planted ΔB {r['planted_delta_a2']} Å²; fitted ΔB "
                  f"{r['fitted_delta_a2']} Å² at {r['fitted_axis_deg']}° (axis error {', '.join(f'{v:.0f}°' for v in err)}); "
                  f"later frames' median ΔB {r['later_delta_a2_median']} Å²")

        if not a.skip_relion:
            print("\n3. RELION 3.1 relion_ctf_refine on the same particles (species 'large')", flush=True)
            if shutil.which("relion_ctf_refine") is None:
                print("relion_ctf_refine is not on PATH (Debian: apt-get install relion): skipped")
            else:
                from mrepo.sim.relion_ctf import compare_ctf_with_relion

                rel = compare_ctf_with_relion(sim, "large", work_dir=work / "relion")
                figures["relion"] = rel
                ctf_step = steps[2]
                m = ctf_step["errors"]
                print(f"{'':<26}{'defocus (Å RMS)':>17}{'astigmatism (Å)':>17}{'beam tilt (mrad)':>18}{'wall (s)':>10}")
                print(f"{'imported':<26}{rel['defocus_before_angstrom']:>17.1f}{rel['astigmatism_before_angstrom']:>17.1f}"
                      f"{rel['beam_tilt_before_mrad']:>18.3f}")
                print(f"{'RELION relion_ctf_refine':<26}{rel['defocus_after_angstrom']:>17.1f}{rel['astigmatism_after_angstrom']:>17.1f}"
                      f"{rel['beam_tilt_after_mrad']:>18.3f}{rel['wall_ctf_refine_s']:>10.0f}")
                print(f"{'mrepo refine (+ CTF)':<26}{m['defocus_rmse_angstrom']['large']:>17.1f}{m['astigmatism_angstrom']:>17.1f}"
                      f"{m['beam_tilt_mrad']:>18.3f}{ctf_step['seconds']:>10.0f}")
                print("(RELION: CTF refinement of one species' polished particles; mrepo: the whole refinement, motion and "
                      "poses included, of all species)")
        if a.json:
            a.json.write_text(json.dumps(figures, indent=1, default=str))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
