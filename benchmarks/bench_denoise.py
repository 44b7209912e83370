"""Benchmark of the noise2noise map denoiser (mrepo.refine.denoise) on simulated half-maps.

Builds a two-domain pseudo-atomic phantom (mrepo.refine.phantom): a rigid core
and a flexible domain whose pose varies per particle subset (so it is blurred,
differently in each half-map), plus independent noise in each half. Then:

* speed: training iterations/s at the full setting (64³ crops) and denoising
  voxels/s, on the CPU (and on the GPU when there is one);
* quality: correlation with the true map, inside the core and inside the
  flexible domain, of one half-map (a) raw, (b) low-pass filtered at the global
  (masked) FSC 0.143 resolution, (c) FSC-weighted (Wiener filter of a half-map,
  weight = FSC per shell), (d) the denoiser's starting point (global band FSC
  gains), (e) denoised; and of the average map low-passed vs denoised. "True
  map" is both the atomic model (domain at its mean pose) and the noise-free
  map infinitely many particles would give (domain averaged over its motion);
* independence: FSC of the denoised halves against what the true signal
  allows, the FSC of denoised pure-noise half-maps, and of denoised halves of
  two unrelated structures (same shape, different atoms);
* local resolution: median in the core and in the domain (windowed FSC).

Every baseline is measured in the same run. Usage::

    python benchmarks/bench_denoise.py                  # full: 80³ maps, 64³ crops, 800 iterations
    python benchmarks/bench_denoise.py --iterations 200 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from mrepo.refine.denoise import DenoiserConfig, denoise_half_maps
from mrepo.refine.fourier import soft_sphere_mask
from mrepo.refine.fsc import fsc
from mrepo.refine.localres import local_resolution
from mrepo.refine.phantom import pseudo_atomic_phantom


def lowpass(v: np.ndarray, res_angstrom: float, px: float, edge_px: float = 2.0) -> np.ndarray:
    n = v.shape[0]
    k = np.fft.fftfreq(n) * n
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.arange(n // 2 + 1)[None, None, :] ** 2)
    w = np.clip((n * px / res_angstrom + edge_px / 2 - r) / edge_px, 0.0, 1.0)
    return np.fft.irfftn(np.fft.rfftn(v) * (0.5 - 0.5 * np.cos(np.pi * w)), s=v.shape, axes=(0, 1, 2)).astype(np.float32)


def shell_filter(v: np.ndarray, weights: np.ndarray) -> np.ndarray:
    n = v.shape[0]
    k = np.fft.fftfreq(n) * n
    r = np.round(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.arange(n // 2 + 1)[None, None, :] ** 2)).astype(int)
    w = np.concatenate([weights, np.zeros(n)])
    return np.fft.irfftn(np.fft.rfftn(v) * w[r], s=v.shape, axes=(0, 1, 2)).astype(np.float32)


def corr(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
    return float(np.corrcoef(a[m], b[m])[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--box", type=int, default=80)
    ap.add_argument("--pixel", type=float, default=1.2, help="Å per voxel")
    ap.add_argument("--noise", type=float, default=1.0, help="noise std relative to the truth's inside the particle")
    ap.add_argument("--iterations", type=int, default=800)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--channels", type=int, default=DenoiserConfig().channels)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="skip the GPU and pure-noise runs")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# bench_denoise: torch {torch.__version__}, {torch.get_num_threads()} CPU threads, load average {load:.2f}, "
          f"CUDA {'yes: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")
    px = args.pixel
    p = pseudo_atomic_phantom(args.box, px, core_radii_angstrom=(18, 15, 15), domain_radii_angstrom=(13, 12, 12),
                              atom_density=1 / 40, atom_sigma_angstrom=1.0, flex_shift_angstrom=2.5, flex_rotation_deg=5.0,
                              noise_std=args.noise, seed=args.seed)
    diameter = 2 * (18 + 13 + 6)
    mask = soft_sphere_mask(args.box, min(args.box / 2 - 3, 0.5 * diameter / px), 3.0).numpy()
    curve = fsc(p.half1, p.half2, px, mask=mask)
    res = curve.resolution()
    print(f"phantom: {args.box}³ at {px} Å/px; core {int(p.core_mask.sum())} voxels, flexible domain "
          f"{int(p.domain_mask.sum())} voxels; half-map FSC 0.143 (masked) {res:.2f} Å, unmasked "
          f"{fsc(p.half1, p.half2, px).resolution():.2f} Å")

    cfg = DenoiserConfig(channels=args.channels)
    figures: dict = {"load_average": load, "box": args.box, "pixel_size": px, "global_resolution_angstrom": res}

    # ---- train + denoise on the CPU (the figures of record) --------------------------------------
    out = denoise_half_maps(p.half1, p.half2, config=cfg, iterations=args.iterations, crop=args.crop, batch=args.batch,
                            seed=args.seed, device="cpu", mask=mask)
    m = out.metrics
    print(f"CPU training: {args.iterations} iterations of {args.batch} x {min(args.crop, args.box)}³ crops in "
          f"{m['train_seconds']:.1f} s = {m['iterations_per_second']:.2f} it/s ({args.channels} channels, "
          f"{sum(v.size for v in out.weights.values()):,} parameters); loss {m['loss_start']:.4f} -> {m['loss_end']:.4f}")
    print(f"CPU denoising: 3 maps of {args.box}³ in {m['denoise_seconds']:.2f} s = {m['voxels_per_second'] / 1e6:.3f} Mvoxel/s")
    figures["cpu"] = {"iterations_per_second": m["iterations_per_second"], "voxels_per_second": m["voxels_per_second"],
                      "train_seconds": m["train_seconds"], "loss_start": m["loss_start"], "loss_end": m["loss_end"]}

    if torch.cuda.is_available() and not args.quick:
        g = denoise_half_maps(p.half1, p.half2, config=cfg, iterations=args.iterations, crop=args.crop, batch=args.batch,
                              seed=args.seed, device="cuda", mask=mask)
        gm = g.metrics
        print(f"GPU training: {gm['iterations_per_second']:.1f} it/s; denoising {gm['voxels_per_second'] / 1e6:.2f} Mvoxel/s "
              f"({torch.cuda.get_device_name(0)})")
        figures["gpu"] = {"iterations_per_second": gm["iterations_per_second"], "voxels_per_second": gm["voxels_per_second"]}

    # ---- quality ------------------------------------------------------------------------------
    start = denoise_half_maps(p.half1, p.half2, config=cfg, iterations=0, device="cpu", mask=mask)
    wiener = np.clip(curve.fsc, 0.0, 1.0)
    rows = {
        "raw half-map": p.half1,
        f"low-pass at global FSC ({res:.2f} Å)": lowpass(p.half1, res, px),
        "FSC-weighted (global Wiener)": shell_filter(p.half1, wiener),
        "denoiser untrained (band FSC gains)": start.half1,
        "denoised half-map 1": out.half1,
        "denoised half-map 2": out.half2,
        "average, low-pass at global FSC": lowpass((p.half1 + p.half2) / 2, res, px),
        "average, denoised": out.average,
    }
    print("\ncorrelation with the true map        core   domain | vs infinite-data map: core  domain")
    figures["correlation"] = {}
    for name, v in rows.items():
        c = [corr(v, p.truth, p.core_mask), corr(v, p.truth, p.domain_mask),
             corr(v, p.expected, p.core_mask), corr(v, p.expected, p.domain_mask)]
        figures["correlation"][name] = c
        print(f"  {name:<36s} {c[0]:.3f}  {c[1]:.3f}  |                      {c[2]:.3f}  {c[3]:.3f}")

    # ---- independence -----------------------------------------------------------------------------
    f12 = fsc(out.half1, out.half2, px, mask=mask)
    f1 = fsc(out.half1, p.expected, px, mask=mask).fsc
    f2 = fsc(out.half2, p.expected, px, mask=mask).fsc
    upto = int(np.searchsorted(-curve.fsc, -0.143))
    excess = (f12.fsc - f1 * f2)[1:upto]
    raw_excess = (curve.fsc - fsc(p.half1, p.expected, px, mask=mask).fsc * fsc(p.half2, p.expected, px, mask=mask).fsc)[1:upto]
    print(f"\nFSC(denoised halves) - FSC(d1, E) FSC(d2, E) over the {upto - 1} shells with signal: max {excess.max():.3f}, "
          f"mean {excess.mean():.3f} (raw halves: max {raw_excess.max():.3f}, mean {raw_excess.mean():.3f})")
    print(f"FSC 0.143 of the denoised halves {f12.resolution():.2f} Å (raw {res:.2f} Å; not gold-standard: they share the network)")
    figures["excess_fsc"] = {"max": float(excess.max()), "mean": float(excess.mean()), "raw_max": float(raw_excess.max())}

    if not args.quick:
        rng = np.random.default_rng(args.seed + 1)
        n1 = rng.normal(size=p.half1.shape).astype(np.float32)
        n2 = rng.normal(size=p.half1.shape).astype(np.float32)
        t0 = time.perf_counter()
        nz = denoise_half_maps(n1, n2, config=cfg, iterations=max(100, args.iterations // 4), crop=min(args.crop, 48),
                               batch=args.batch, seed=args.seed, device="cpu")
        fn = fsc(nz.half1, nz.half2, px).fsc[1:]
        k = np.fft.fftfreq(args.box) * args.box
        r = np.round(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)).astype(int)
        sigma = 1 / np.sqrt(np.bincount(r.ravel())[1 : args.box // 2 + 1] / 2)
        print(f"pure-noise halves ({time.perf_counter() - t0:.0f} s): denoised output std {nz.half1.std():.3f} of input "
              f"{n1.std():.3f}; FSC of the denoised halves: max |FSC| {np.abs(fn).max():.3f}, mean {fn.mean():+.4f}, "
              f"max |FSC|/sigma {np.max(np.abs(fn) / sigma):.2f} (3 sigma is the noise threshold)")
        figures["pure_noise"] = {"max_abs_fsc": float(np.abs(fn).max()), "mean_fsc": float(fn.mean()),
                                 "max_over_sigma": float(np.max(np.abs(fn) / sigma))}
        # half 1 of this structure with half 2 of another one (same shape, other atoms)
        q = pseudo_atomic_phantom(args.box, px, core_radii_angstrom=(18, 15, 15), domain_radii_angstrom=(13, 12, 12),
                                  atom_density=1 / 40, atom_sigma_angstrom=1.0, flex_shift_angstrom=2.5,
                                  flex_rotation_deg=5.0, noise_std=args.noise, seed=args.seed + 7)
        un = denoise_half_maps(p.half1, q.half2, config=cfg, iterations=max(100, args.iterations // 4), crop=min(args.crop, 48),
                               batch=args.batch, seed=args.seed, device="cpu")
        hi = slice(args.box // 6, args.box // 2 + 1)
        fu = fsc(un.half1, un.half2, px).fsc[hi]
        fe = fsc(p.expected, q.expected, px).fsc[hi]
        fr = fsc(p.half1, q.half2, px).fsc[hi]
        print(f"halves of unrelated structures, shells {hi.start}-{hi.stop - 1} (beyond {args.box * px / hi.start:.1f} Å): "
              f"mean FSC denoised {fu.mean():+.4f}, raw {fr.mean():+.4f}, true signals {fe.mean():+.4f}; "
              f"max |FSC|/sigma denoised {np.max(np.abs(fu) / sigma[hi.start - 1:hi.stop - 1]):.2f}")
        figures["unrelated"] = {"mean_fsc_denoised": float(fu.mean()), "mean_fsc_raw": float(fr.mean()),
                                "mean_fsc_true": float(fe.mean())}

    # ---- local resolution --------------------------------------------------------------------------
    t0 = time.perf_counter()
    lr = local_resolution(p.half1, p.half2, px)
    lr_s = time.perf_counter() - t0
    core, dom = float(np.median(lr.map[p.core_mask])), float(np.median(lr.map[p.domain_mask]))
    print(f"\nlocal resolution (windowed FSC, {lr.window_px} px window, {lr_s:.2f} s): median {core:.2f} Å in the core, "
          f"{dom:.2f} Å in the flexible domain")
    figures["local_resolution"] = {"core": core, "domain": dom, "seconds": lr_s}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
