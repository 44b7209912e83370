"""Throughput of the forward model: projections/s and back-projections/s.

Measures :func:`mrepo.refine.projection.project` and
:func:`mrepo.refine.backprojection.backproject` for 128 px and 256 px boxes
(padding 2, trilinear) in batches, on the CPU and on CUDA when present, and in
the same run a plain numpy implementation of the same operations (one image
at a time, vectorised over its pixels; ``np.add.at`` for splatting), so that
the ratio is measured on the same machine. Prints figures, not pass/fail.

    python benchmarks/bench_forward.py [--boxes 128 256] [--batch 128] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from mrepo.refine.backprojection import backproject, new_accumulator
from mrepo.refine.euler import euler_to_matrix
from mrepo.refine.projection import prepare_volume, project


# ----------------------------------------------------------------------------- numpy baseline


def _np_disk(n: int, half_kx0: bool):
    ky = np.fft.fftfreq(n) * n
    kx = np.arange(n // 2 + 1, dtype=np.float64)
    kyy, kxx = np.meshgrid(ky, kx, indexing="ij")
    keep = kxx**2 + kyy**2 < (n / 2) ** 2
    if half_kx0:
        keep &= ~((kxx == 0) & (kyy < 0))
    flat = np.nonzero(keep.ravel())[0]
    return flat, kxx.ravel()[flat], kyy.ravel()[flat]


def _np_corners(coords: np.ndarray, p: int):
    """Folded coords (M, 3) -> list of (flat index, weight) for the 8 trilinear neighbours."""
    ph = p // 2 + 1
    base = np.floor(coords)
    f = coords - base
    b = base.astype(np.int64)
    out = []
    for dz in (0, 1):
        wz = f[:, 2] if dz else 1 - f[:, 2]
        zi = (b[:, 2] + dz) % p
        for dy in (0, 1):
            wy = f[:, 1] if dy else 1 - f[:, 1]
            yi = (b[:, 1] + dy) % p
            for dx in (0, 1):
                wx = f[:, 0] if dx else 1 - f[:, 0]
                xi = b[:, 0] + dx
                w = wz * wy * wx
                if dx:
                    w = np.where(xi < ph, w, 0.0)
                    xi = np.minimum(xi, ph - 1)
                out.append(((zi * p + yi) * ph + xi, w))
    return out


def numpy_project(table: np.ndarray, rots: np.ndarray, n: int, p: int) -> np.ndarray:
    """Central slices, one image at a time: (B, n, n//2+1) complex64."""
    flat, kx, ky = _np_disk(n, False)
    out = np.zeros((len(rots), n * (n // 2 + 1)), dtype=np.complex64)
    scale = p / n
    for i, a in enumerate(rots):
        q = scale * (kx[:, None] * a[0][None, :] + ky[:, None] * a[1][None, :])
        sign = np.where(q[:, 0] < 0, -1.0, 1.0)
        q *= sign[:, None]
        v = np.zeros(len(flat), dtype=np.complex128)
        for idx, w in _np_corners(q, p):
            v += w * table[idx]
        out[i, flat] = v.real + 1j * v.imag * sign
    return out.reshape(len(rots), n, n // 2 + 1)


def numpy_backproject(data: np.ndarray, weight: np.ndarray, images: np.ndarray, rots: np.ndarray, p: int) -> None:
    """Trilinear splatting with np.add.at, one image at a time (weights 1)."""
    n = images.shape[-2]
    flat, kx, ky = _np_disk(n, True)
    scale = p / n
    for i, a in enumerate(rots):
        q = scale * (kx[:, None] * a[0][None, :] + ky[:, None] * a[1][None, :])
        sign = np.where(q[:, 0] < 0, -1.0, 1.0)
        q *= sign[:, None]
        v = images[i].ravel()[flat]
        v = v.real + 1j * v.imag * sign
        for idx, w in _np_corners(q, p):
            np.add.at(data, idx, w * v)
            np.add.at(weight, idx, w)


# ----------------------------------------------------------------------------- timing


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _rate(fn, count: int, dev: torch.device | None = None, repeat: int = 3) -> float:
    """Best items/s over ``repeat`` runs of ``fn`` (which processes ``count`` items)."""
    best = math.inf
    for _ in range(repeat):
        if dev is not None:
            _sync(dev)
        t = time.perf_counter()
        fn()
        if dev is not None:
            _sync(dev)
        best = min(best, time.perf_counter() - t)
    return count / best


def bench_box(box: int, batch: int, devices: list[torch.device], n_numpy: int) -> None:
    print(f"\n== box {box} px (padded {2 * box}), batch {batch} ==")
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((box, box, box)).astype(np.float32)
    ang = torch.tensor(rng.uniform(0, 360, (batch, 3)))
    sh = torch.tensor(rng.uniform(-5, 5, (batch, 2)))
    rots = euler_to_matrix(ang).numpy()

    # numpy baseline (CPU, one image at a time)
    fv_cpu = prepare_volume(vol, 1.0)
    table = fv_cpu.data.numpy().ravel().astype(np.complex128)
    p = fv_cpu.padded_box
    np_proj = _rate(lambda: numpy_project(table, rots[:n_numpy], box, p), n_numpy, repeat=1)
    imgs = numpy_project(table, rots[:n_numpy], box, p)
    ref = project(fv_cpu, ang[:n_numpy]).numpy()
    agree = np.abs(imgs - ref).max() / np.abs(ref).max()
    acc_d = np.zeros(p * p * (p // 2 + 1), dtype=np.complex128)
    acc_w = np.zeros(p * p * (p // 2 + 1), dtype=np.float64)
    np_bp = _rate(lambda: numpy_backproject(acc_d, acc_w, imgs, rots[:n_numpy], p), n_numpy, repeat=1)
    del table, acc_d, acc_w
    print(f"  numpy baseline        : {np_proj:9.1f} projections/s   {np_bp:9.1f} back-projections/s"
          f"   (agrees with torch to {agree:.1e})")

    for dev in devices:
        t = time.perf_counter()
        fv = prepare_volume(vol, 1.0, device=dev)
        _sync(dev)
        t_prep = time.perf_counter() - t
        a, s = ang.to(dev), sh.to(dev)
        project(fv, a[:8], s[:8])  # warm-up
        r_proj = _rate(lambda: project(fv, a, s), batch, dev)
        images = project(fv, a, s)
        weights = torch.ones(1, device=dev)
        acc = new_accumulator(box, 1.0, device=dev)
        backproject(acc, images[:8], weights, a[:8], s[:8])  # warm-up
        r_bp = _rate(lambda: backproject(acc, images, weights, a, s), batch, dev)
        del acc, fv, images
        label = f"torch {dev.type}" + (f" ({torch.get_num_threads()} threads)" if dev.type == "cpu" else "")
        print(f"  {label:22s}: {r_proj:9.1f} projections/s   {r_bp:9.1f} back-projections/s"
              f"   (prepare_volume {t_prep:.2f} s)")
        print(f"  {'  ratio to numpy':22s}: {r_proj / np_proj:9.1f} x               {r_bp / np_bp:9.1f} x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--batch", type=int, default=128, help="images per call")
    ap.add_argument("--numpy-images", type=int, default=8, help="images timed with the numpy baseline")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--no-cuda", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    print(f"torch {torch.__version__}, numpy {np.__version__}, CPU threads {torch.get_num_threads()}, "
          f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    for box in args.boxes:
        bench_box(box, args.batch, devices, args.numpy_images)


if __name__ == "__main__":
    main()
