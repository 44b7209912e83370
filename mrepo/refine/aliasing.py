"""Aliasing-free CTF handling (M paper, Online Methods, "Avoiding CTF aliasing"; Extended Data Fig. 3).

A particle image of ``n`` pixels samples Fourier space every ``1/(n s)`` Å⁻¹.
At high defocus the CTF phase ``γ`` changes by more than π between
neighbouring Fourier pixels: a CTF evaluated on that grid is aliased, and the
image's delocalised signal (spread over ``λ Δf |k|`` Å) leaves the box.

M's remedy, implemented here:

* :func:`aliasing_free_box` — the smallest box whose Fourier pixels see a CTF
  phase change below π, also along diagonals: ``n ≥ √2 · max|∇γ| / (π s)``
  (``max`` over ``|k| ≤ 1/resolution``, all directions; plus the particle
  diameter in px, as Warp's ``CTF.GetAliasingFreeSize``);
* :func:`premultiply_ctf` — multiply the image by the conjugate CTF at that
  size (which refocuses the delocalised signal), then crop in real space to
  the working box;
* :func:`ctf_squared_bandlimited` — the matching weight: ``|CTF|²`` computed
  at the large size, transformed to real space, cropped the same way and
  transformed back. It replaces the (aliased) ``CTF²`` of the small box in
  reconstruction and in the refinement target.
"""

from __future__ import annotations

import math

import torch

from ..errors import InvalidInput
from .ctf import Aberrations, CtfParams, ctf_2d, ctf_phase
from .fourier import crop_center, irfft2_centered, next_fft_size, pad_center, rfft2_centered

__all__ = [
    "max_ctf_phase_gradient",
    "aliasing_free_box",
    "premultiply_ctf",
    "ctf_squared_bandlimited",
]


def max_ctf_phase_gradient(
    params: CtfParams,
    resolution_angstrom: float,
    *,
    aberrations: Aberrations | None = None,
    n_radial: int = 256,
    n_angular: int = 72,
    batch_chunk: int = 64,
) -> torch.Tensor:
    """Largest ``|∇γ|`` (rad·Å) of the CTF phase over ``|k| <= 1/resolution_angstrom``.

    Parameters
    ----------
    params: CTF parameters, batch shape ``S``.
    resolution_angstrom: the finest resolution needed (Å).
    aberrations: magnification matrix and even Zernike terms enter ``γ`` (shared by the
        whole batch: no batch dimensions here).
    n_radial, n_angular: polar sampling of the disk (angles over [0, π); ``γ`` is even).
    batch_chunk: batch elements evaluated at once.

    Returns
    -------
    ``S``-shaped float64 tensor (CPU or the parameters' device).
    """
    if not resolution_angstrom > 0:
        raise InvalidInput("resolution must be positive (Å)", str(resolution_angstrom))
    kmax = 1.0 / float(resolution_angstrom)
    shape = params.batch_shape()
    flat = params.as_tensors(dtype=torch.float64)
    dev = flat.device()
    flat = CtfParams(**{k: v.reshape(-1) for k, v in vars(flat).items()})
    nb = flat.voltage_kv.numel()
    r = torch.linspace(0.0, kmax, n_radial, dtype=torch.float64, device=dev)
    t = torch.arange(n_angular, dtype=torch.float64, device=dev) * (math.pi / n_angular)
    kx = r[:, None] * torch.cos(t)[None, :]
    ky = r[:, None] * torch.sin(t)[None, :]
    h = kmax * 1e-5
    out = []
    for s in range(0, nb, batch_chunk):
        p = flat[s : s + batch_chunk]

        def gamma(x, y, p=p):
            return ctf_phase(p, x, y, aberrations=aberrations)

        gx = (gamma(kx + h, ky) - gamma(kx - h, ky)) / (2 * h)
        gy = (gamma(kx, ky + h) - gamma(kx, ky - h)) / (2 * h)
        out.append(torch.sqrt(gx * gx + gy * gy).amax(dim=(-2, -1)))
    return torch.cat(out).reshape(shape)


def aliasing_free_box(
    params: CtfParams,
    pixel_size_angstrom: float,
    resolution_angstrom: float | None = None,
    *,
    particle_diameter_angstrom: float = 0.0,
    aberrations: Aberrations | None = None,
    min_box: int = 0,
    fft_friendly: bool = True,
) -> int:
    """Smallest even box (px) in which the CTF is sampled without aliasing up to a resolution.

    ``n = ceil(√2 · max|∇γ| / (π s) + d / s)``, the maximum taken over the batch
    of ``params`` and over ``|k| <= 1/resolution`` (default: Nyquist, ``2 s``);
    ``d`` is the particle diameter (Å). Then at least ``min_box``, rounded up to
    an even size (with factors 2, 3, 5 only when ``fft_friendly``).
    """
    s = float(pixel_size_angstrom)
    if not s > 0:
        raise InvalidInput("pixel size must be positive (Å)", str(pixel_size_angstrom))
    res = 2.0 * s if resolution_angstrom is None else float(resolution_angstrom)
    if res < 2.0 * s:
        raise InvalidInput("resolution beyond Nyquist for this pixel size", f"{res} Å < {2 * s} Å")
    g = float(max_ctf_phase_gradient(params, res, aberrations=aberrations).max())
    n = math.ceil(math.sqrt(2.0) * g / (math.pi * s) + particle_diameter_angstrom / s)
    n = max(n, int(min_box), 2)
    if fft_friendly:
        return next_fft_size(n, even=True)
    return n + (n % 2)


def premultiply_ctf(
    images: torch.Tensor,
    params: CtfParams,
    pixel_size_angstrom: float,
    out_box: int,
    *,
    work_box: int | None = None,
    aberrations: Aberrations | None = None,
    damping: bool = True,
) -> torch.Tensor:
    """Multiply images by their (conjugate) CTF at a large box, then crop in real space.

    Parameters
    ----------
    images: ``(..., m, m)`` real images (the batch shape broadcasts with ``params``).
    params: CTF parameters.
    pixel_size_angstrom: Å/px.
    out_box: returned box ``n`` (px), ``<= work_box``.
    work_box: box ``L`` at which the CTF is applied (default ``m``). Images smaller than
        ``L`` are zero-padded around the centre, larger ones cropped.
    aberrations: as :func:`mrepo.refine.ctf.ctf_2d`; with odd aberrations the
        images are multiplied by the conjugate of the complex CTF.
    damping: include the B-factor envelope.

    Returns
    -------
    ``(..., n, n)`` real: ``crop_n( F⁻¹[ conj(CTF_L) · F[pad_L(images)] ] )``. For an even
    ``L`` the Nyquist row and column (``|k| >= L/2``) are set to 0: an astigmatic CTF
    is not Friedel-symmetric there, which would leave the inverse transform ill-defined.
    """
    m = images.shape[-1]
    work = m if work_box is None else int(work_box)
    if out_box > work:
        raise InvalidInput("output box must not exceed the working box", f"{out_box} > {work}")
    x = pad_center(images, work) if work > m else crop_center(images, work)
    c = ctf_2d(params, work, pixel_size_angstrom, aberrations=aberrations, damping=damping,
               device=images.device, dtype=images.dtype)
    if work % 2 == 0:
        nyquist = torch.ones(c.shape[-2:], device=c.device, dtype=c.real.dtype)
        nyquist[work // 2, :] = 0
        nyquist[:, work // 2] = 0
        c = c * nyquist
    xf = rfft2_centered(x) * (c.conj() if c.is_complex() else c)
    return crop_center(irfft2_centered(xf, work), out_box)


def ctf_squared_bandlimited(
    params: CtfParams,
    pixel_size_angstrom: float,
    out_box: int,
    work_box: int,
    *,
    aberrations: Aberrations | None = None,
    damping: bool = True,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """``|CTF|²`` at ``work_box``, cropped in real space to ``out_box``: the weight matching :func:`premultiply_ctf`.

    Parameters
    ----------
    params: CTF parameters, batch shape ``S``.
    pixel_size_angstrom: Å/px.
    out_box: box ``n`` of the premultiplied, cropped images (px).
    work_box: box ``L`` at which they were multiplied by the CTF (px).
    aberrations, damping: as :func:`mrepo.refine.ctf.ctf_2d` (odd aberrations cancel in ``|CTF|²``).

    Returns
    -------
    ``(*S, n, n // 2 + 1)`` real tensor (rfft layout, DC at index 0), clamped at 0: where
    ``|CTF|²`` is small and the cropped PSF's oscillating tail dominates (near DC at high
    defocus) the raw result can be negative, which is no weight (RELION clamps its
    padded CTF² for premultiplied data the same way).
    """
    if out_box > work_box:
        raise InvalidInput("output box must not exceed the working box", f"{out_box} > {work_box}")
    c = ctf_2d(params, work_box, pixel_size_angstrom, aberrations=aberrations, damping=damping,
               device=device, dtype=dtype)
    c2 = (c * c.conj()).real if c.is_complex() else c * c
    psf = irfft2_centered(c2, work_box)
    return rfft2_centered(crop_center(psf, out_box)).real.clamp(min=0.0)
