"""Fourier-space grids, centred transforms, crops and masks shared by the forward model.

Conventions (DESIGN §5)
-----------------------
* Arrays are ``(..., z, y, x)`` or ``(..., y, x)``, C order.
* The centre of a box of ``n`` pixels is the pixel ``n // 2`` (as RELION and
  ``numpy.fft.fftshift``). Cropping and padding keep that pixel the centre.
* Fourier arrays use the rfft half layout: ``(..., n, n // 2 + 1)`` in 2D and
  ``(..., n, n, n // 2 + 1)`` in 3D, DC at index 0 (not centred). The
  *centred* transform (:func:`rfft2_centered`) is the rfft of the image after
  ``ifftshift``: its phases refer to the box centre, so that a centred object
  has a real, smooth transform. Names say ``centered``/``fftshifted`` when the
  DC sits in the middle of the array instead.
* Frequencies: integer Fourier pixel indices (``ky`` along rows, ``kx`` along
  the last axis; ``ky`` in ``fftfreq(n) * n`` order), or 1/Å once divided by
  ``n * pixel_size_angstrom``.
"""

from __future__ import annotations

import math

import torch

from ..errors import InvalidInput

__all__ = [
    "freq_indices",
    "freq_grid_2d",
    "rfft2_centered",
    "irfft2_centered",
    "rfftn3_centered",
    "irfftn3_centered",
    "crop_center",
    "pad_center",
    "fourier_crop_rfft2",
    "radius_grid",
    "soft_sphere_mask",
    "next_fft_size",
]


def _check_box(n: int, what: str = "box") -> int:
    if int(n) != n or n < 1:
        raise InvalidInput(f"{what} must be a positive integer number of pixels", str(n))
    return int(n)


def freq_indices(n: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Integer Fourier indices of an ``n``-point full axis in FFT order, shape ``(n,)``.

    ``0, 1, ..., ceil(n/2)-1, -floor(n/2), ..., -1`` (``fftfreq(n) * n``).
    """
    n = _check_box(n)
    return torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=dtype)


def freq_grid_2d(
    box: int,
    pixel_size_angstrom: float | None = None,
    *,
    rfft: bool = True,
    centered: bool = False,
    device=None,
    dtype=torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequency coordinates ``(ky, kx)`` of a 2D Fourier array of a ``box``-pixel image.

    Parameters
    ----------
    box:
        Image size in pixels (square).
    pixel_size_angstrom:
        If given, frequencies are in 1/Å (``index / (box * pixel_size)``);
        otherwise integer Fourier indices (cycles per box).
    rfft:
        Half layout ``(box, box // 2 + 1)`` when True, full ``(box, box)`` otherwise.
    centered:
        Put DC in the middle (``fftshift`` over the full axes; for the rfft
        layout only the first axis is shifted).

    Returns
    -------
    (ky, kx), each of shape ``(box, box // 2 + 1)`` (rfft) or ``(box, box)``.
    """
    n = _check_box(box)
    ky = freq_indices(n, device=device, dtype=dtype)
    if rfft:
        kx = torch.arange(n // 2 + 1, device=device, dtype=dtype)
    else:
        kx = freq_indices(n, device=device, dtype=dtype)
    if centered:
        ky = torch.fft.fftshift(ky)
        if not rfft:
            kx = torch.fft.fftshift(kx)
    if pixel_size_angstrom is not None:
        if not pixel_size_angstrom > 0:
            raise InvalidInput("pixel size must be positive (Å)", str(pixel_size_angstrom))
        scale = 1.0 / (n * float(pixel_size_angstrom))
        ky = ky * scale
        kx = kx * scale
    kyy, kxx = torch.meshgrid(ky, kx, indexing="ij")
    return kyy, kxx


def rfft2_centered(images: torch.Tensor) -> torch.Tensor:
    """rfft of real images ``(..., n, n)`` with phases referred to the box centre.

    Returns ``(..., n, n // 2 + 1)`` complex (unnormalised forward transform,
    as numpy/FFTW): ``rfft2(ifftshift(images))``.
    """
    return torch.fft.rfft2(torch.fft.ifftshift(images, dim=(-2, -1)))


def irfft2_centered(images_ft: torch.Tensor, box: int) -> torch.Tensor:
    """Inverse of :func:`rfft2_centered`: ``(..., n, n//2+1)`` complex -> ``(..., n, n)`` real."""
    n = _check_box(box)
    return torch.fft.fftshift(torch.fft.irfft2(images_ft, s=(n, n)), dim=(-2, -1))


def rfftn3_centered(volume: torch.Tensor) -> torch.Tensor:
    """rfftn of real volumes ``(..., n, n, n)`` with phases referred to the box centre.

    Returns ``(..., n, n, n // 2 + 1)`` complex.
    """
    dims = (-3, -2, -1)
    return torch.fft.rfftn(torch.fft.ifftshift(volume, dim=dims), dim=dims)


def irfftn3_centered(volume_ft: torch.Tensor, box: int) -> torch.Tensor:
    """Inverse of :func:`rfftn3_centered`: ``(..., n, n, n//2+1)`` -> ``(..., n, n, n)`` real."""
    n = _check_box(box)
    dims = (-3, -2, -1)
    return torch.fft.fftshift(torch.fft.irfftn(volume_ft, s=(n, n, n), dim=dims), dim=dims)


def _crop_slices(big: int, small: int) -> slice:
    start = big // 2 - small // 2
    return slice(start, start + small)


def crop_center(x: torch.Tensor, box: int, ndim: int = 2) -> torch.Tensor:
    """Crop the last ``ndim`` axes of ``x`` to ``box`` pixels around the centre pixel ``n // 2``."""
    box = _check_box(box)
    sl = []
    for size in x.shape[-ndim:]:
        if box > size:
            raise InvalidInput(f"cannot crop {size} px to a larger box", str(box))
        sl.append(_crop_slices(size, box))
    return x[(Ellipsis, *sl)]


def pad_center(x: torch.Tensor, box: int, ndim: int = 2, value: float = 0.0) -> torch.Tensor:
    """Pad the last ``ndim`` axes of ``x`` to ``box`` pixels, keeping pixel ``n // 2`` the centre."""
    box = _check_box(box)
    pads: list[int] = []
    for size in reversed(x.shape[-ndim:]):
        if box < size:
            raise InvalidInput(f"cannot pad {size} px to a smaller box", str(box))
        before = box // 2 - size // 2
        pads += [before, box - size - before]
    return torch.nn.functional.pad(x, pads, value=value)


def fourier_crop_rfft2(images_ft: torch.Tensor, box: int) -> torch.Tensor:
    """Crop 2D rfft-layout transforms ``(..., n, n//2+1)`` to ``(..., box, box//2+1)``.

    Keeps the rows ``ky = -box/2 ... box/2 - 1`` (FFT order, as
    :func:`freq_indices`) and the columns ``kx = 0 ... box//2``. The values are not
    rescaled: an unnormalised transform of the cropped image would differ by
    ``(box / n)**2``, which callers apply if they need real-space intensities.
    """
    n = images_ft.shape[-2]
    box = _check_box(box)
    if box > n:
        raise InvalidInput(f"cannot Fourier-crop {n} px to a larger box", str(box))
    if box == n:
        return images_ft
    ky = freq_indices(box, device=images_ft.device, dtype=torch.float32).long() % n
    return images_ft[..., ky, : box // 2 + 1]


def radius_grid(box: int, ndim: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Distance in pixels from the centre pixel ``box // 2`` on a ``box**ndim`` grid."""
    n = _check_box(box)
    ax = torch.arange(n, device=device, dtype=dtype) - n // 2
    grids = torch.meshgrid(*([ax] * ndim), indexing="ij")
    return torch.sqrt(sum(g * g for g in grids))


def soft_sphere_mask(
    box: int, radius_px: float, edge_px: float = 3.0, *, ndim: int = 3, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Spherical (or circular) mask with a raised-cosine edge, shape ``(box,)*ndim``.

    1 inside ``radius_px``, 0 beyond ``radius_px + edge_px``, cosine in between.
    """
    if radius_px <= 0 or edge_px < 0:
        raise InvalidInput("mask radius must be positive and edge width non-negative (px)",
                           f"{radius_px}, {edge_px}")
    r = radius_grid(box, ndim, device=device, dtype=dtype)
    if edge_px == 0:
        return (r <= radius_px).to(dtype)
    t = ((r - radius_px) / edge_px).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def next_fft_size(n: int, *, even: bool = True) -> int:
    """Smallest size ``>= n`` whose prime factors are 2, 3 and 5 (and even when asked)."""
    m = max(1, int(math.ceil(n)))
    while True:
        if not (even and m % 2):
            k = m
            for p in (2, 3, 5):
                while k % p == 0:
                    k //= p
            if k == 1:
                return m
        m += 1
