"""Fourier shell correlation, resolution at a threshold, and FSC plots.

``FSC(r) = Σ_shell Re(F1 F2*) / sqrt(Σ_shell |F1|² · Σ_shell |F2|²)`` over the
voxels whose rounded radius is ``r`` (Fourier px), ``r = 0 .. N/2``; shell
``r`` is at ``r / (N s)`` Å⁻¹. Sums run over the full Fourier space (the rfft
half counted twice except its self-mated planes ``kx = 0`` and ``kx = N/2``).
Resolution is where the curve first falls below the threshold (0.143 for
gold-standard half-maps), interpolated linearly between shells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Union

import numpy as np
import torch

from ..errors import DegenerateResult, InvalidInput

__all__ = ["FscCurve", "fsc", "resolution_at", "plot_fsc"]


@dataclass(frozen=True)
class FscCurve:
    """An FSC curve.

    Attributes
    ----------
    freqs_per_angstrom: ``(N/2 + 1,)`` shell frequencies (1/Å), from 0.
    fsc: ``(N/2 + 1,)`` correlations.
    """

    freqs_per_angstrom: np.ndarray
    fsc: np.ndarray

    def resolution(self, threshold: float = 0.143) -> float:
        """Shortcut for :func:`resolution_at` (Å)."""
        return resolution_at(self, threshold)

    def __iter__(self):  # allows ``freqs, values = curve``
        yield self.freqs_per_angstrom
        yield self.fsc


CurveLike = Union[FscCurve, tuple]


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.from_numpy(np.ascontiguousarray(x))


def fsc(map1, map2, pixel_size_angstrom: float = 1.0, *, mask=None) -> FscCurve:
    """FSC between two maps (or two square images).

    Parameters
    ----------
    map1, map2: ``(N, N, N)`` or ``(N, N)`` real maps, numpy or torch (any device).
    pixel_size_angstrom: voxel size (Å) for the frequency axis.
    mask: optional real-space mask multiplied into both maps first.

    Returns
    -------
    :class:`FscCurve` with ``N // 2 + 1`` shells (numpy, float64).
    """
    a = _as_tensor(map1).to(torch.float64)
    b = _as_tensor(map2).to(a.device, torch.float64)
    if a.shape != b.shape or a.dim() not in (2, 3) or len(set(a.shape)) != 1:
        raise InvalidInput("FSC needs two cubes (or squares) of the same size", f"{tuple(a.shape)} vs {tuple(b.shape)}")
    if mask is not None:
        m = _as_tensor(mask).to(a.device, torch.float64)
        a, b = a * m, b * m
    n = a.shape[0]
    nd = a.dim()
    fa = torch.fft.rfftn(a)
    fb = torch.fft.rfftn(b)
    full = torch.fft.fftfreq(n, d=1.0 / n, device=a.device, dtype=torch.float64)
    half = torch.arange(n // 2 + 1, device=a.device, dtype=torch.float64)
    axes = [full] * (nd - 1) + [half]
    grids = torch.meshgrid(*axes, indexing="ij")
    r = torch.sqrt(sum(g * g for g in grids))
    shell = torch.round(r).long()
    n_shells = n // 2 + 1
    keep = shell < n_shells
    mult = torch.full(fa.shape, 2.0, dtype=torch.float64, device=a.device)
    mult[..., 0] = 1.0
    if n % 2 == 0:
        mult[..., n // 2] = 1.0
    shell_k = shell[keep]
    mult_k = mult[keep]

    def shell_sum(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_shells, dtype=torch.float64, device=a.device).index_add_(0, shell_k, v[keep] * mult_k)

    num = shell_sum((fa * fb.conj()).real)
    d1 = shell_sum(fa.real**2 + fa.imag**2)
    d2 = shell_sum(fb.real**2 + fb.imag**2)
    den = torch.sqrt(d1 * d2)
    values = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
    freqs = np.arange(n_shells, dtype=np.float64) / (n * float(pixel_size_angstrom))
    return FscCurve(freqs_per_angstrom=freqs, fsc=values.cpu().numpy())


def _unpack(curve: CurveLike) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(curve, FscCurve):
        return curve.freqs_per_angstrom, curve.fsc
    freqs, values = curve
    return np.asarray(freqs, dtype=np.float64), np.asarray(values, dtype=np.float64)


def resolution_at(curve: CurveLike, threshold: float = 0.143) -> float:
    """Resolution (Å) where the FSC first falls below ``threshold`` (linear interpolation).

    Parameters
    ----------
    curve: :class:`FscCurve` or ``(freqs_per_angstrom, fsc)``.
    threshold: e.g. 0.143 (half-maps) or 0.5.

    Returns
    -------
    ``1 / f`` at the crossing, between the last shell at or above the threshold and the
    first below it. If the curve never falls below the threshold, the resolution of the
    last shell (the best measurable). Raises :class:`DegenerateResult` if it is
    already below at the first shell after DC.
    """
    freqs, values = _unpack(curve)
    if freqs.shape != values.shape or freqs.ndim != 1 or len(freqs) < 2:
        raise InvalidInput("an FSC curve needs matching 1D frequencies and values (>= 2 shells)",
                           f"{freqs.shape} vs {values.shape}")
    below = np.nonzero(values[1:] < threshold)[0]
    if len(below) == 0:
        return float(1.0 / freqs[-1])
    i = int(below[0]) + 1  # first shell below the threshold
    if i == 1:
        raise DegenerateResult(f"FSC is below {threshold} already at the first shell", f"{values[1]:.3f}")
    f0, f1 = freqs[i - 1], freqs[i]
    v0, v1 = values[i - 1], values[i]
    f = f0 + (v0 - threshold) / (v0 - v1) * (f1 - f0)
    return float(1.0 / f)


def plot_fsc(
    curves: Mapping[str, CurveLike],
    path_png: str | Path,
    *,
    threshold: float = 0.143,
    title: str | None = None,
) -> Path:
    """Plot FSC curves against spatial frequency (1/Å) with the ``threshold`` line; write a PNG.

    Parameters
    ----------
    curves: name -> :class:`FscCurve` or ``(freqs_per_angstrom, fsc)``; the legend shows
        each curve's resolution at ``threshold``.
    path_png: output file.

    Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if not curves:
        raise InvalidInput("no FSC curves to plot", str(path_png))
    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    fmax = 0.0
    for name, curve in curves.items():
        freqs, values = _unpack(curve)
        try:
            label = f"{name} ({resolution_at((freqs, values), threshold):.2f} Å)"
        except DegenerateResult:
            label = f"{name} (< first shell)"
        ax.plot(freqs, values, label=label)
        fmax = max(fmax, float(freqs[-1]))
    ax.axhline(threshold, color="0.4", linestyle="--", linewidth=1.0, label=f"FSC = {threshold}")
    ax.axhline(0.0, color="0.8", linewidth=0.8)
    ax.set_xlim(0.0, fmax)
    ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
