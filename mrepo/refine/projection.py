"""Projection of a 3D map: central slices of its padded Fourier transform (torch, differentiable).

Forward model of one particle image (before the CTF), for a map ``V`` of
``N`` voxels a side with pixel size ``s`` (Å):

    I(x, y) = ∫ V(Aᵀ (x + ox/s, y + oy/s, z)) dz

``A`` is RELION's Euler matrix (:mod:`mrepo.refine.euler`), ``(ox, oy)`` the
particle's ``rlnOriginXAngst``/``rlnOriginYAngst``: the particle centre sits
at ``-(ox, oy)`` from the box centre, and translating the image by
``+(ox, oy)`` centres it (RELION ``reconstructor.cpp``). In Fourier space
(rfft half layout, phases referred to the box centre, see
:func:`mrepo.refine.fourier.rfft2_centered`):

    F_I(k) = F_V(P/n · Aᵀ (kx, ky, 0)) · exp(+2πi (kx ox + ky oy) / (n s))

with ``F_V`` the transform of the map zero-padded to ``P = padding · N``
voxels (default ``padding = 2``) and pre-divided by the trilinear gridding
kernel, sampled by trilinear interpolation; ``k`` are Fourier indices of
the ``n``-pixel output box (``n = N`` unless asked otherwise; the pixel size
is always ``s``). Frequencies with ``|k| >= r_max`` (default ``n/2``) are 0.

Gradients flow to the angles, the shifts and the map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidInput
from .euler import euler_to_matrix
from .fourier import freq_indices, pad_center, rfftn3_centered
from .interp import (
    corner_offsets,
    from_sampling_layout,
    gridding_correction_3d,
    hermitian_fold,
    inside_sampling,
    to_sampling_layout,
    trilinear_base,
)

#: Cap on the number of (image, pixel) samples interpolated at once (memory vs. speed).
_SAMPLES_PER_CHUNK = 1 << 16

__all__ = [
    "FourierVolume",
    "prepare_volume",
    "disk_pixels",
    "project",
    "project_rotations",
    "real_space_projection",
]


@dataclass(frozen=True)
class FourierVolume:
    """A map ready for central-slice extraction.

    Attributes
    ----------
    samples: ``(P + 1, P + 1, P // 2 + 1)`` complex tensor: the centred rfft of the padded,
        gridding-corrected map in the sampling layout of :mod:`mrepo.refine.interp`.
    box: ``N``, size of the original map (voxels).
    padded_box: ``P``.
    pixel_size_angstrom: voxel size (Å).
    """

    samples: torch.Tensor
    box: int
    padded_box: int
    pixel_size_angstrom: float

    @property
    def device(self) -> torch.device:
        return self.samples.device

    @property
    def real_dtype(self) -> torch.dtype:
        return self.samples.real.dtype

    @property
    def data(self) -> torch.Tensor:
        """The transform in the plain rfft layout, ``(P, P, P // 2 + 1)`` complex."""
        return from_sampling_layout(self.samples, accumulate=False)

    @classmethod
    def from_rfft(cls, data: torch.Tensor, box: int, pixel_size_angstrom: float) -> "FourierVolume":
        """Wrap a ``(P, P, P//2+1)`` centred rfft (see :func:`prepare_volume`)."""
        p = data.shape[0]
        if data.shape != (p, p, p // 2 + 1) or not data.is_complex() or p % 2:
            raise InvalidInput("expected a complex (P, P, P//2+1) transform with P even", str(tuple(data.shape)))
        return cls(samples=to_sampling_layout(data), box=int(box), padded_box=p,
                   pixel_size_angstrom=float(pixel_size_angstrom))


def _padded_size(box: int, padding: float) -> int:
    if padding < 1:
        raise InvalidInput("padding factor must be >= 1", str(padding))
    p = int(round(padding * box))
    return p + (p % 2)


def prepare_volume(
    volume,
    pixel_size_angstrom: float,
    *,
    padding: float = 2.0,
    gridding_correction: bool = True,
    device=None,
    dtype=torch.float32,
) -> FourierVolume:
    """Pad a real map and take its centred rfft, ready for :func:`project`.

    Parameters
    ----------
    volume: ``(N, N, N)`` real map (z, y, x), numpy or torch.
    pixel_size_angstrom: voxel size (Å).
    padding: Fourier oversampling; the padded box is ``P = padding·N`` rounded to even.
    gridding_correction: divide the map by the trilinear kernel's transform first
        (as RELION's ``Projector::computeFourierTransformMap``).
    device, dtype: target device (default: the volume's, else CPU) and real precision.
        Differentiable in ``volume`` when it is a tensor that requires grad.
    """
    if isinstance(volume, np.ndarray):
        volume = torch.from_numpy(np.ascontiguousarray(volume))
    vol = volume.to(device=device if device is not None else volume.device, dtype=dtype)
    if vol.dim() != 3 or len(set(vol.shape)) != 1:
        raise InvalidInput("map must be a cube (N, N, N)", str(tuple(vol.shape)))
    if not pixel_size_angstrom > 0:
        raise InvalidInput("pixel size must be positive (Å)", str(pixel_size_angstrom))
    n = vol.shape[0]
    p = _padded_size(n, padding)
    if gridding_correction:
        vol = vol / gridding_correction_3d(n, p, device=vol.device, dtype=vol.dtype)
    return FourierVolume.from_rfft(rfftn3_centered(pad_center(vol, p, ndim=3)), n, pixel_size_angstrom)


def disk_pixels(
    box: int, r_max_px: float | None = None, *, half_kx0: bool = False, crop_box: int | None = None, device=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fourier pixels of a ``box``-pixel image (rfft layout) inside ``|k| < r_max_px``.

    Parameters
    ----------
    box: image size ``n`` (px); frequencies are indices of this grid.
    r_max_px: radius (Fourier px of the ``n`` grid), default ``n / 2``.
    half_kx0: drop the ``kx = 0, ky < 0`` half column (Friedel mates of ``ky > 0``),
        as needed for insertion into a Hermitian half grid.
    crop_box: lay the pixels out on a smaller ``(c, c//2+1)`` rfft array (a Fourier
        crop: same frequency step, fewer frequencies); ``r_max`` is then at most ``c/2``.

    Returns
    -------
    (flat index into the ``(c, c//2+1)`` array, kx, ky) — each ``(M,)``; kx, ky as float32 indices.
    """
    c = box if crop_box is None else int(crop_box)
    if c > box:
        raise InvalidInput("Fourier crop must not exceed the image box", f"{c} > {box}")
    r_max = box / 2 if r_max_px is None else float(r_max_px)
    r_max = min(r_max, c / 2)
    ky = freq_indices(c, device=device)
    kx = torch.arange(c // 2 + 1, device=device, dtype=torch.float32)
    kyy, kxx = torch.meshgrid(ky, kx, indexing="ij")
    keep = kxx * kxx + kyy * kyy < r_max * r_max
    if half_kx0:
        keep &= ~((kxx == 0) & (kyy < 0))
    flat = torch.nonzero(keep.reshape(-1)).squeeze(1)
    return flat, kxx.reshape(-1)[flat], kyy.reshape(-1)[flat]


def _as_float_tensor(x, device, dtype) -> torch.Tensor:
    t = torch.as_tensor(x, device=device)
    return t.to(dtype) if t.dtype != dtype else t


def project_rotations(
    fvol: FourierVolume,
    rotations: torch.Tensor,
    shifts_angstrom: torch.Tensor | None = None,
    *,
    out_box: int | None = None,
    crop_box: int | None = None,
    r_max_px: float | None = None,
    flat_output: bool = False,
) -> torch.Tensor:
    """Central slices for given rotation matrices; see :func:`project` (angles -> matrices).

    With ``flat_output=True`` the result is ``(..., M)``: the values at the ``M`` pixels
    of :func:`disk_pixels` ``(n, r_max_px, crop_box=c)``, in that order (no
    zero-filled array; the refinement target works on these directly).
    """
    real_dtype = fvol.real_dtype
    dev = fvol.device
    rot = _as_float_tensor(rotations, dev, real_dtype)
    if rot.shape[-2:] != (3, 3):
        raise InvalidInput("rotations must have shape (..., 3, 3)", str(tuple(rot.shape)))
    batch_shape = rot.shape[:-2]
    rot = rot.reshape(-1, 3, 3)
    b = rot.shape[0]
    n = fvol.box if out_box is None else int(out_box)
    c = n if crop_box is None else int(crop_box)
    flat, kx, ky = disk_pixels(n, r_max_px, crop_box=c, device=dev)
    kx = kx.to(real_dtype)
    ky = ky.to(real_dtype)
    p = fvol.padded_box
    scale = p / n
    table = fvol.samples.reshape(-1)
    offsets = [o for o, _, _, _ in corner_offsets(p)]
    sh = None
    if shifts_angstrom is not None:
        sh = _as_float_tensor(shifts_angstrom, dev, real_dtype).reshape(-1, 2)
        if sh.shape[0] not in (1, b):
            raise InvalidInput("one (x, y) origin per orientation is needed", f"{sh.shape[0]} vs {b}")
        sh = sh.expand(b, 2)
    chunk = max(1, _SAMPLES_PER_CHUNK // max(flat.numel(), 1))
    pieces = []
    for s in range(0, b, chunk):
        r = rot[s : s + chunk]
        # q = scale · Aᵀ (kx, ky, 0): row i of Aᵀ is column i of A.
        coords = scale * (kx[None, :, None] * r[:, None, 0, :] + ky[None, :, None] * r[:, None, 1, :])
        coords, sign = hermitian_fold(coords)
        inside = inside_sampling(coords, p)
        clipped = not bool(inside.all())
        if clipped:  # beyond the padded grid (a magnification matrix): read DC, then zero
            coords = torch.where(inside[..., None], coords, torch.zeros_like(coords))
        base, frac = trilinear_base(coords, p)
        fx, fy, fz = frac[..., 0], frac[..., 1], frac[..., 2]
        v = [torch.take(table, base + o) for o in offsets]  # order (dz, dy, dx) = 000, 001, 010, ...
        c00 = v[0] + (v[1] - v[0]) * fx
        c01 = v[2] + (v[3] - v[2]) * fx
        c10 = v[4] + (v[5] - v[4]) * fx
        c11 = v[6] + (v[7] - v[6]) * fx
        c0 = c00 + (c01 - c00) * fy
        c1 = c10 + (c11 - c10) * fy
        val = c0 + (c1 - c0) * fz
        vals = torch.complex(val.real, val.imag * sign)
        if clipped:
            vals = vals * inside
        if sh is not None:
            phase = (2 * math.pi / (n * fvol.pixel_size_angstrom)) * (
                kx[None, :] * sh[s : s + chunk, 0:1] + ky[None, :] * sh[s : s + chunk, 1:2]
            )
            vals = vals * torch.polar(torch.ones_like(phase), phase)
        pieces.append(vals)
    vals = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
    if flat_output:
        return vals.reshape(batch_shape + (vals.shape[-1],))
    out = torch.zeros((b, c * (c // 2 + 1)), device=dev, dtype=vals.dtype)
    out = out.index_copy(1, flat, vals)
    return out.reshape(batch_shape + (c, c // 2 + 1))


def project(
    fvol: FourierVolume,
    angles_deg: torch.Tensor,
    shifts_angstrom: torch.Tensor | None = None,
    *,
    out_box: int | None = None,
    crop_box: int | None = None,
    r_max_px: float | None = None,
) -> torch.Tensor:
    """Fourier projections of a prepared map at RELION Euler angles and origins.

    Parameters
    ----------
    fvol: map from :func:`prepare_volume`.
    angles_deg: ``(..., 3)`` ``(rot, tilt, psi)`` in degrees.
    shifts_angstrom: ``(..., 2)`` ``(rlnOriginXAngst, rlnOriginYAngst)`` in Å, or None.
    out_box: output image size ``n`` (px, default the map's ``N``; at most ``padding·N``
        for correct sampling). The pixel size stays the map's.
    crop_box: return only the frequencies of a ``(c, c//2+1)`` Fourier crop of the
        ``n``-pixel image (same frequency step), e.g. for dose-limited frames.
    r_max_px: frequencies at or beyond this radius (Fourier px of the ``n`` grid) are 0;
        default ``n / 2``.

    Returns
    -------
    ``(..., c, c // 2 + 1)`` complex tensor (``c = crop_box or n``): the centred rfft
    of the projection image (:func:`mrepo.refine.fourier.rfft2_centered` layout).
    Apply :func:`mrepo.refine.fourier.irfft2_centered` for the real-space image.
    """
    angles = _as_float_tensor(angles_deg, fvol.device, fvol.real_dtype)
    return project_rotations(
        fvol, euler_to_matrix(angles), shifts_angstrom, out_box=out_box, crop_box=crop_box, r_max_px=r_max_px
    )


def real_space_projection(volume: np.ndarray, angles_deg, shifts_px=None, *, order: int = 3) -> np.ndarray:
    """Reference projector: rotate the map in real space (scipy) and sum along z.

    Independent of the Fourier path; for tests and for checking conventions.

    Parameters
    ----------
    volume: ``(N, N, N)`` real map (z, y, x).
    angles_deg: ``(3,)`` or ``(B, 3)`` RELION ``(rot, tilt, psi)`` in degrees.
    shifts_px: optional ``(B, 2)`` origins ``(ox, oy)`` in px (``rlnOriginX`` sign).
    order: spline order of :func:`scipy.ndimage.affine_transform`.

    Returns
    -------
    ``(B, N, N)`` float64 line integrals ``I(x, y) = Σ_z V(Aᵀ (x + ox, y + oy, z))``
    (coordinates relative to the centre voxel ``N // 2``; voxel units).
    """
    from scipy import ndimage

    vol = np.asarray(volume, dtype=np.float64)
    n = vol.shape[0]
    ang = np.atleast_2d(np.asarray(angles_deg, dtype=np.float64))
    mats = euler_to_matrix(torch.from_numpy(ang)).numpy()
    shifts = np.zeros((len(ang), 2)) if shifts_px is None else np.atleast_2d(np.asarray(shifts_px, float))
    centre = np.full(3, n // 2, dtype=np.float64)
    perm = np.array([2, 1, 0])  # (x, y, z) <-> (z, y, x)
    out = np.empty((len(ang), n, n))
    for i, a in enumerate(mats):
        # output index o (z, y, x) is image-frame point p = o - c (as x, y, z after reversal);
        # sample the map at r = Aᵀ (p + (ox, oy, 0)).
        m = a.T[np.ix_(perm, perm)]
        s = np.array([0.0, shifts[i, 1], shifts[i, 0]])  # (z, y, x)
        offset = centre - m @ centre + m @ s
        rotated = ndimage.affine_transform(vol, m, offset=offset, order=order, mode="constant", cval=0.0)
        out[i] = rotated.sum(axis=0)
    return out
