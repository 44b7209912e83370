"""Local resolution from windowed FSC between two half-maps, and its picture.

Method
------
For every voxel, the FSC of the two half-maps inside a soft window around it,
in frequency bands, and the resolution where it first falls below a
threshold (0.143, as the global gold-standard FSC):

1. Split the spectrum into bands as wide as the window resolves: band ``j``
   is centred on ``j·Δ`` Fourier px with ``Δ = N / window_px`` (``N`` the box),
   with raised-cosine profiles that add up to one.
2. Band-pass both half-maps (``b1_j``, ``b2_j``) and correlate them locally:
   ``FSC_j(x) = G*(b1_j b2_j) / sqrt(G*(b1_j²) · G*(b2_j²))`` with ``G`` a
   Gaussian window of standard deviation ``window_px / 4`` (so ±2σ spans the
   window). By Parseval this is the FSC of the Gaussian-windowed sub-volumes
   around ``x`` in band ``j`` (up to the window's spectral blur, which the band
   width matches), computed for all voxels at once with FFTs.
3. The local resolution is ``1 / f`` where ``FSC_j(x)`` first crosses the
   threshold, interpolated linearly between bands (Å). A voxel whose first
   band is already below gets the coarsest value, ``window_px · pixel size``; one
   that never falls below gets the finest band's (near Nyquist).

Why the half-maps and not the denoiser's output: the two halves are
independent measurements, so their local agreement is a gold-standard,
model-free estimate of where the data hold signal. The denoised halves share
one network trained on both; its output is smooth by design and its FSC can
be raised by what the network has learnt rather than by the data.
The denoiser is what *uses* the local resolution implicitly (it smooths more
where the halves disagree); this map is what *reports* it.

Outside the molecule the value is noise-limited and meaningless; read it
where the map has density (the PNG colours the density by it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInput
from .device import pick_device

__all__ = ["LocalResolution", "local_resolution", "default_window_px", "plot_local_resolution"]

METHOD = "windowed-fsc-bands"


@dataclass(frozen=True)
class LocalResolution:
    """A local-resolution map.

    Attributes
    ----------
    map: ``(N, N, N)`` float32, Å per voxel.
    window_px: window edge (voxels); its Gaussian has σ = window_px / 4.
    threshold: FSC threshold.
    band_freqs_per_angstrom: centre frequency of each band (1/Å).
    method: ``'windowed-fsc-bands'``.
    """

    map: np.ndarray
    window_px: int
    threshold: float
    band_freqs_per_angstrom: np.ndarray
    method: str = METHOD


def default_window_px(box: int, pixel_size_angstrom: float) -> int:
    """About 24 Å, even, between 12 voxels and half the box."""
    w = 2 * int(round(12.0 / float(pixel_size_angstrom)))
    return int(max(min(12, box // 2), min(max(w, 12), box // 2)))


def _radius(n: int, device: torch.device) -> torch.Tensor:
    k = torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=torch.float64)
    kx = torch.arange(n // 2 + 1, device=device, dtype=torch.float64)
    return torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)


def local_resolution(
    half1: Any,
    half2: Any,
    pixel_size_angstrom: float,
    *,
    window_px: int | None = None,
    threshold: float = 0.143,
    device: str | torch.device = "cpu",
) -> LocalResolution:
    """Local resolution (Å per voxel) of two half-maps ``(N, N, N)`` by windowed FSC.

    Parameters
    ----------
    half1, half2: the two independent half-maps.
    pixel_size_angstrom: voxel size (Å).
    window_px: window edge in voxels (default :func:`default_window_px`, about 24 Å).
    threshold: FSC threshold (0.143 for half-maps).
    device: where to compute (``'cpu'``, ``'cuda'``, ``'auto'``).
    """
    a = np.asarray(half1, dtype=np.float32)
    b = np.asarray(half2, dtype=np.float32)
    if a.shape != b.shape or a.ndim != 3 or len(set(a.shape)) != 1:
        raise InvalidInput("local resolution needs two cubes of the same size", f"{a.shape} vs {b.shape}")
    if not pixel_size_angstrom > 0:
        raise InvalidInput("pixel size must be positive (Å)", str(pixel_size_angstrom))
    n = a.shape[0]
    w = int(window_px) if window_px is not None else default_window_px(n, pixel_size_angstrom)
    if not 4 <= w <= n:
        raise InvalidInput(f"local-resolution window must be 4-{n} voxels", str(w))
    dev = pick_device(device)
    px = float(pixel_size_angstrom)
    delta = n / w  # band spacing, Fourier px
    n_bands = int(math.floor((n / 2) / delta))
    if n_bands < 2:
        raise InvalidInput("window too large for the box: fewer than two frequency bands", str(w))
    centres = delta * np.arange(1, n_bands + 1)
    freqs = centres / (n * px)
    r = _radius(n, dev)
    t1 = torch.from_numpy(a).to(dev, torch.float64)
    t2 = torch.from_numpy(b).to(dev, torch.float64)
    f1 = torch.fft.rfftn(t1 - t1.mean())
    f2 = torch.fft.rfftn(t2 - t2.mean())
    sigma = w / 4.0
    gauss = torch.exp(-2.0 * math.pi**2 * sigma**2 * (r / n) ** 2)  # FT of the unit-sum Gaussian window

    def smooth(v: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfftn(torch.fft.rfftn(v) * gauss, s=(n, n, n))

    res = torch.full((n, n, n), float("nan"), dtype=torch.float64, device=dev)
    prev = None
    for j, c in enumerate(centres):
        # raised-cosine band: 1 at its centre, 0 at the neighbouring centres; bands add up to 1
        x = ((r - c) / delta).clamp(-1.0, 1.0)
        prof = torch.cos(0.5 * math.pi * x) ** 2
        if j == 0:
            prof = torch.where(r < c, torch.ones_like(prof), prof)
        if j == n_bands - 1:
            prof = torch.where(r > c, torch.ones_like(prof), prof)
        b1 = torch.fft.irfftn(f1 * prof, s=(n, n, n))
        b2 = torch.fft.irfftn(f2 * prof, s=(n, n, n))
        num = smooth(b1 * b2)
        den = torch.sqrt((smooth(b1 * b1) * smooth(b2 * b2)).clamp_min(0.0))
        cur = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
        below = cur < threshold
        todo = torch.isnan(res)
        if j == 0:
            res = torch.where(todo & below, torch.full_like(res, 1.0 / freqs[0]), res)
        else:
            # linear interpolation of the crossing between band j-1 (>= threshold) and band j
            v0, v1 = prev, cur
            t = ((v0 - threshold) / (v0 - v1).clamp_min(1e-12)).clamp(0.0, 1.0)
            f = freqs[j - 1] + t * (freqs[j] - freqs[j - 1])
            res = torch.where(todo & below, 1.0 / f, res)
        prev = cur
    res = torch.where(torch.isnan(res), torch.full_like(res, 1.0 / freqs[-1]), res)
    return LocalResolution(res.to(torch.float32).cpu().numpy(), w, float(threshold), freqs)


def plot_local_resolution(
    density: np.ndarray,
    local_res: np.ndarray,
    path_png: str | Path,
    *,
    pixel_size_angstrom: float | None = None,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """Central slices (xy, xz, yz) of ``density`` coloured by ``local_res`` (Å); writes a PNG.

    Colour is the local resolution (blue: finest, red: coarsest); brightness and
    opacity follow the density (negative density is transparent), so the
    colour is read where the molecule is. The colour scale spans the 2nd to 98th
    percentile of the local resolution where the density is strong, unless
    ``vmin``/``vmax`` are given.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    d = np.asarray(density, dtype=np.float32)
    lr = np.asarray(local_res, dtype=np.float32)
    if d.shape != lr.shape or d.ndim != 3:
        raise InvalidInput("density and local resolution must be 3D maps of the same shape", f"{d.shape} vs {lr.shape}")
    n = d.shape
    hi = float(np.percentile(d, 99.5))
    strong = d > 0.3 * hi if hi > 0 else np.ones_like(d, bool)
    vals = lr[strong] if strong.any() else lr.ravel()
    lo_v = float(np.percentile(vals, 2)) if vmin is None else float(vmin)
    hi_v = float(np.percentile(vals, 98)) if vmax is None else float(vmax)
    if not hi_v > lo_v:
        hi_v = lo_v + 1e-3
    norm = Normalize(lo_v, hi_v)
    cmap = colormaps["jet"]
    slices = [("xy (z = %d)" % (n[0] // 2), d[n[0] // 2], lr[n[0] // 2]),
              ("xz (y = %d)" % (n[1] // 2), d[:, n[1] // 2, :], lr[:, n[1] // 2, :]),
              ("yz (x = %d)" % (n[2] // 2), d[:, :, n[2] // 2], lr[:, :, n[2] // 2])]
    fig = Figure(figsize=(11.0, 4.0), dpi=110)
    axes = [fig.add_axes([0.02 + 0.3 * i, 0.08, 0.28, 0.78]) for i in range(3)]
    for ax, (name, ds, ls) in zip(axes, slices):
        alpha = np.clip(ds / hi, 0.0, 1.0) if hi > 0 else np.zeros_like(ds)
        rgb = cmap(norm(ls))[..., :3]
        img = alpha[..., None] * rgb + (1 - alpha[..., None]) * 0.08  # dark background
        ax.imshow(img, origin="lower", interpolation="nearest")
        ax.set_title(name, fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    cax = fig.add_axes([0.925, 0.12, 0.018, 0.7])
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    cb.set_label("local resolution (Å)")
    if pixel_size_angstrom:
        fig.text(0.02, 0.02, f"box {n[2]} px = {n[2] * float(pixel_size_angstrom):.1f} Å", fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
