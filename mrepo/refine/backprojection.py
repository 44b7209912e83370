"""Fourier back-projection and reconstruction by division by summed weights.

Insertion (RELION ``BackProjector::backproject2Dto3D``; M's reconstruction)
---------------------------------------------------------------------------
Each 2D datum is the centred rfft ``X_i(k)`` of a particle image (already
multiplied by its CTF, i.e. ``CTF_i · Y_i``) with a real weight ``W_i(k)``
(``CTF_i²`` times exposure weights). After undoing the particle's origin,
``X_i(k) · exp(-2πi k·o_i / (n s))``, the values are splatted with trilinear
weights into a padded 3D half grid (``P = padding · N``) at
``q = P/n · A_iᵀ (kx, ky, 0)`` — the same points :func:`mrepo.refine.projection.project`
reads. Data sum ``D(q)`` and weight sum ``W(q)`` are accumulated together.

Reconstruction
--------------
``F(q) = D(q) / (W(q) + τ(|q|))`` with a Wiener-like constant ``τ`` per shell
(by default ``1e-3`` times the shell's mean weight; or given, e.g. ``1/SSNR``),
inverse FFT, crop to ``N``, division by the trilinear gridding kernel
``sinc²`` (see :mod:`mrepo.refine.interp`), optional soft spherical mask.
Half-maps come from two independent accumulators (gold standard).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InvalidInput
from .ctf import Aberrations, CtfParams
from .euler import euler_to_matrix
from .fourier import crop_center, irfftn3_centered, rfft2_centered, soft_sphere_mask
from .interp import (
    corner_offsets,
    from_sampling_layout,
    gridding_correction_3d,
    hermitian_fold,
    inside_sampling,
    sampling_shape,
    symmetrize_half_planes,
    trilinear_base,
)
from .projection import _padded_size, disk_pixels

__all__ = [
    "FourierAccumulator",
    "new_accumulator",
    "backproject",
    "reconstruct",
    "Reconstructor",
    "ReconstructionResult",
    "reconstruct_from_particles",
]

#: Default cap on the number of (image, pixel) samples splatted at once.
_SAMPLES_PER_CHUNK = 1 << 16


@dataclass
class FourierAccumulator:
    """Running sums of back-projected data and weights.

    Attributes
    ----------
    grid: ``(P + 1, P + 1, P // 2 + 1, 3)`` real tensor: real part, imaginary part of the
        data sum ``D`` and the weight sum ``W``, in the sampling layout of :mod:`mrepo.refine.interp`.
    box: ``N``, size of the map to reconstruct (voxels).
    padded_box: ``P``.
    pixel_size_angstrom: voxel size (Å).
    count: number of images inserted.
    """

    grid: torch.Tensor
    box: int
    padded_box: int
    pixel_size_angstrom: float
    count: int = 0

    @property
    def data(self) -> torch.Tensor:
        """Data sum ``D`` as a complex ``(P, P, P//2+1)`` tensor in the rfft layout (a copy)."""
        g = from_sampling_layout(self.grid[..., :2], accumulate=True)
        return torch.complex(g[..., 0], g[..., 1])

    @property
    def weight(self) -> torch.Tensor:
        """Weight sum ``W``, ``(P, P, P//2+1)`` in the rfft layout (a copy)."""
        return from_sampling_layout(self.grid[..., 2], accumulate=True)

    def add_(self, other: "FourierAccumulator") -> "FourierAccumulator":
        """Add another accumulator of the same geometry into this one (e.g. merging halves)."""
        if other.grid.shape != self.grid.shape:
            raise InvalidInput("accumulators differ in size", f"{tuple(other.grid.shape)} vs {tuple(self.grid.shape)}")
        self.grid += other.grid.to(self.grid.device)
        self.count += other.count
        return self


def new_accumulator(
    box: int, pixel_size_angstrom: float, *, padding: float = 2.0, device=None, dtype=torch.float32
) -> FourierAccumulator:
    """Empty accumulator for an ``N = box`` map (padded Fourier grid ``P = padding·N``)."""
    if int(box) != box or box < 2:
        raise InvalidInput("box must be an integer >= 2 (px)", str(box))
    if not pixel_size_angstrom > 0:
        raise InvalidInput("pixel size must be positive (Å)", str(pixel_size_angstrom))
    p = _padded_size(int(box), padding)
    grid = torch.zeros(sampling_shape(p) + (3,), device=device, dtype=dtype)
    return FourierAccumulator(grid=grid, box=int(box), padded_box=p, pixel_size_angstrom=float(pixel_size_angstrom))


def backproject(
    acc: FourierAccumulator,
    images_ft: torch.Tensor,
    weights: torch.Tensor,
    angles_deg: torch.Tensor | None = None,
    shifts_angstrom: torch.Tensor | None = None,
    *,
    rotations: torch.Tensor | None = None,
    r_max_px: float | None = None,
) -> None:
    """Insert weighted 2D Fourier data into ``acc`` (in place).

    Parameters
    ----------
    acc: accumulator from :func:`new_accumulator`.
    images_ft: ``(B, n, n // 2 + 1)`` complex, centred rfft of CTF-premultiplied images
        (:func:`mrepo.refine.fourier.rfft2_centered`), pixel size ``acc.pixel_size_angstrom``.
    weights: real, broadcastable to ``(B, n, n // 2 + 1)`` (e.g. CTF² × dose weight).
    angles_deg: ``(B, 3)`` RELION ``(rot, tilt, psi)`` in degrees (or give ``rotations``).
    shifts_angstrom: ``(B, 2)`` ``(rlnOriginXAngst, rlnOriginYAngst)`` in Å, or None.
    rotations: ``(B, 3, 3)`` RELION matrices instead of angles.
    r_max_px: insert only ``|k| < r_max_px`` (Fourier px of the ``n`` grid); default ``n/2``.
    """
    grid = acc.grid
    dev, real = grid.device, grid.dtype
    x = images_ft.to(device=dev)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if not x.is_complex() or x.dim() != 3 or x.shape[-1] != x.shape[-2] // 2 + 1:
        raise InvalidInput("images must be complex (B, n, n//2+1) rfft arrays", str(tuple(x.shape)))
    b, n = x.shape[0], x.shape[-2]
    if rotations is None:
        if angles_deg is None:
            raise InvalidInput("give angles_deg or rotations", "backproject")
        rotations = euler_to_matrix(torch.as_tensor(angles_deg, device=dev, dtype=torch.float64))
    rot = torch.as_tensor(rotations, device=dev).to(real).reshape(-1, 3, 3)
    if rot.shape[0] != b:
        raise InvalidInput("one orientation per image is needed", f"{rot.shape[0]} vs {b}")
    w_all = torch.as_tensor(weights, device=dev).to(real)
    try:
        w_all = torch.broadcast_to(w_all, (b,) + tuple(x.shape[-2:]))
    except RuntimeError:
        raise InvalidInput("weights do not broadcast to the images", str(tuple(w_all.shape))) from None
    sh = None
    if shifts_angstrom is not None:
        sh = torch.as_tensor(shifts_angstrom, device=dev).to(real).reshape(-1, 2)
        if sh.shape[0] not in (1, b):
            raise InvalidInput("one (x, y) origin per image is needed", f"{sh.shape[0]} vs {b}")
        sh = sh.expand(b, 2)

    flat, kx, ky = disk_pixels(n, r_max_px, half_kx0=True, device=dev)
    kx, ky = kx.to(real), ky.to(real)
    m = flat.numel()
    scale = acc.padded_box / n
    table = grid.view(-1, 3)
    xf = x.reshape(b, -1)
    wf = w_all.reshape(b, -1)
    chunk = max(1, _SAMPLES_PER_CHUNK // max(m, 1))
    for s in range(0, b, chunk):
        e = min(b, s + chunk)
        vals = xf[s:e].index_select(1, flat)
        wts = wf[s:e].index_select(1, flat)
        if sh is not None:
            phase = (-2 * math.pi / (n * acc.pixel_size_angstrom)) * (
                kx[None, :] * sh[s:e, 0:1] + ky[None, :] * sh[s:e, 1:2]
            )
            vals = vals * torch.polar(torch.ones_like(phase), phase)
        r = rot[s:e]
        coords = scale * (kx[None, :, None] * r[:, None, 0, :] + ky[None, :, None] * r[:, None, 1, :])
        coords, sign = hermitian_fold(coords)
        inside = inside_sampling(coords, acc.padded_box)
        if not bool(inside.all()):  # beyond the padded grid (a magnification matrix): not inserted
            coords = torch.where(inside[..., None], coords, torch.zeros_like(coords))
            vals = vals * inside
            wts = wts * inside
        base, frac = trilinear_base(coords, acc.padded_box)
        payload = torch.stack([vals.real.to(real), vals.imag.to(real) * sign, wts], dim=-1)
        wx = (1.0 - frac[..., 0], frac[..., 0])
        wy = (1.0 - frac[..., 1], frac[..., 1])
        wz = (1.0 - frac[..., 2], frac[..., 2])
        idx0 = base.reshape(-1)
        for off, dz, dy, dx in corner_offsets(acc.padded_box):
            w = (wz[dz] * wy[dy] * wx[dx]).unsqueeze(-1)
            table.index_add_(0, idx0 + off, (payload * w).reshape(-1, 3))
    acc.count += b


def _shell_index(padded_box: int, box: int, device) -> torch.Tensor:
    """Shell of each voxel of the padded half grid, in Fourier px of the ``box`` grid (rounded)."""
    p = padded_box
    q = torch.fft.fftfreq(p, d=1.0 / p, device=device)
    qx = torch.arange(p // 2 + 1, device=device, dtype=q.dtype)
    r = torch.sqrt(q[:, None, None] ** 2 + q[None, :, None] ** 2 + qx[None, None, :] ** 2)
    return torch.round(r * box / p).long()


def reconstruct(
    acc: FourierAccumulator,
    *,
    wiener: float | torch.Tensor | None = None,
    wiener_relative: float = 1e-3,
    gridding_correction: bool = True,
    r_max_px: float | None = None,
    mask_radius_angstrom: float | None = None,
    mask_edge_angstrom: float = 6.0,
) -> torch.Tensor:
    """Map from an accumulator: ``D / (W + τ)``, inverse FFT, crop, gridding correction.

    Parameters
    ----------
    acc: accumulated data and weights.
    wiener: ``τ`` — a constant, or a 1D tensor indexed by shell (Fourier px of the
        ``N`` grid, length ``>= N/2 + 1``), in the units of the weights (e.g.
        ``1 / SSNR`` for CTF²-weighted data). None: ``wiener_relative`` × mean weight of the shell.
    wiener_relative: relative floor used when ``wiener`` is None.
    gridding_correction: divide by the trilinear kernel's ``sinc²`` in real space.
    r_max_px: zero frequencies at or beyond this radius (px of the ``N`` grid), default ``N/2``.
    mask_radius_angstrom: apply a soft spherical mask of this radius (Å), edge ``mask_edge_angstrom``.

    Returns
    -------
    ``(N, N, N)`` real map (z, y, x), same device and real dtype as the accumulator.
    """
    n, p = acc.box, acc.padded_box
    dev = acc.grid.device
    data = symmetrize_half_planes(acc.data, conjugate=True)
    weight = symmetrize_half_planes(acc.weight, conjugate=False)
    shells = _shell_index(p, n, dev)
    n_shells = int(shells.max()) + 1
    if wiener is None:
        sums = torch.zeros(n_shells, device=dev, dtype=weight.dtype)
        sums.index_add_(0, shells.reshape(-1), weight.reshape(-1))
        counts = torch.bincount(shells.reshape(-1), minlength=n_shells).to(weight.dtype)
        tau = wiener_relative * sums / counts.clamp(min=1)
        tau_vox = tau[shells]
    else:
        t = torch.as_tensor(wiener, device=dev, dtype=weight.dtype)
        if t.dim() == 0:
            tau_vox = t
        else:
            if t.numel() < n // 2 + 1:
                raise InvalidInput(f"per-shell Wiener constant needs >= {n // 2 + 1} values", str(t.numel()))
            tau_vox = t[shells.clamp(max=t.numel() - 1)]
    denom = weight + tau_vox
    r_max = n / 2 if r_max_px is None else float(r_max_px)
    q = torch.fft.fftfreq(p, d=1.0 / p, device=dev)
    qx = torch.arange(p // 2 + 1, device=dev, dtype=q.dtype)
    r2 = (q[:, None, None] ** 2 + q[None, :, None] ** 2 + qx[None, None, :] ** 2) * (n / p) ** 2
    keep = (denom > 0) & (r2 < r_max * r_max)
    f = torch.where(keep, data / torch.where(keep, denom, torch.ones_like(denom)), torch.zeros_like(data))
    vol = crop_center(irfftn3_centered(f, p), n, ndim=3)
    if gridding_correction:
        vol = vol / gridding_correction_3d(n, p, device=dev, dtype=vol.dtype)
    if mask_radius_angstrom is not None:
        s = acc.pixel_size_angstrom
        vol = vol * soft_sphere_mask(n, mask_radius_angstrom / s, mask_edge_angstrom / s, device=dev, dtype=vol.dtype)
    return vol


class Reconstructor:
    """Gold-standard half-map reconstruction: one accumulator per half.

    Parameters
    ----------
    box: map size ``N`` (px).
    pixel_size_angstrom: pixel size (Å).
    padding: Fourier oversampling of the accumulators (default 2).
    n_halves: number of independent accumulators (2 for half-maps).
    device, dtype: where the accumulators live and their real precision.
    """

    def __init__(
        self,
        box: int,
        pixel_size_angstrom: float,
        *,
        padding: float = 2.0,
        n_halves: int = 2,
        device=None,
        dtype=torch.float32,
    ) -> None:
        self.halves = [
            new_accumulator(box, pixel_size_angstrom, padding=padding, device=device, dtype=dtype)
            for _ in range(n_halves)
        ]

    @property
    def box(self) -> int:
        return self.halves[0].box

    @property
    def pixel_size_angstrom(self) -> float:
        return self.halves[0].pixel_size_angstrom

    def _half(self, half: int) -> FourierAccumulator:
        if not 0 <= half < len(self.halves):
            raise InvalidInput(f"half must be in 0..{len(self.halves) - 1}", str(half))
        return self.halves[half]

    def insert(
        self,
        images_ft: torch.Tensor,
        weights: torch.Tensor,
        angles_deg: torch.Tensor,
        shifts_angstrom: torch.Tensor | None = None,
        *,
        half: int = 0,
        r_max_px: float | None = None,
    ) -> None:
        """Back-project into one half (0-based); arguments as :func:`backproject`."""
        backproject(self._half(half), images_ft, weights, angles_deg, shifts_angstrom, r_max_px=r_max_px)

    def reconstruct(self, half: int | None = 0, **kwargs) -> torch.Tensor:
        """Map of one half, or of all halves merged when ``half`` is None; kwargs as :func:`reconstruct`."""
        if half is None:
            merged = FourierAccumulator(
                grid=torch.zeros_like(self.halves[0].grid),
                box=self.box,
                padded_box=self.halves[0].padded_box,
                pixel_size_angstrom=self.pixel_size_angstrom,
            )
            for h in self.halves:
                merged.add_(h)
            return reconstruct(merged, **kwargs)
        return reconstruct(self._half(half), **kwargs)

    def reconstruct_halves(self, **kwargs) -> list[torch.Tensor]:
        """All half-maps; kwargs as :func:`reconstruct`."""
        return [reconstruct(h, **kwargs) for h in self.halves]


@dataclass
class ReconstructionResult:
    """Half-maps and their FSC from :func:`reconstruct_from_particles`.

    Attributes
    ----------
    half_maps: two ``(N, N, N)`` float32 numpy maps (z, y, x).
    pixel_size_angstrom: voxel size (Å).
    fsc: :class:`mrepo.refine.fsc.FscCurve` between the halves (unmasked).
    counts: images inserted into each half.
    """

    half_maps: list[np.ndarray]
    pixel_size_angstrom: float
    fsc: object
    counts: list[int] = field(default_factory=list)

    @property
    def full_map(self) -> np.ndarray:
        """Average of the half-maps (not a joint reconstruction)."""
        return 0.5 * (self.half_maps[0] + self.half_maps[1])


def reconstruct_from_particles(
    images,
    angles_deg,
    pixel_size_angstrom: float,
    *,
    shifts_angstrom=None,
    ctf: CtfParams | None = None,
    aberrations: Aberrations | None = None,
    subsets=None,
    work_box: int | None = None,
    dose_weights=None,
    ctf_premultiplied: bool = False,
    padding: float = 2.0,
    batch_size: int = 256,
    device=None,
    wiener_relative: float = 1e-3,
    mask_radius_angstrom: float | None = None,
) -> ReconstructionResult:
    """Half-maps from raw particle images, the way ``relion_reconstruct --ctf`` does it.

    Parameters
    ----------
    images: ``(B, n, n)`` real particle images (numpy or torch), pixel size ``pixel_size_angstrom``.
    angles_deg: ``(B, 3)`` RELION ``(rot, tilt, psi)``.
    pixel_size_angstrom: Å/px.
    shifts_angstrom: ``(B, 2)`` ``rlnOriginXAngst/YAngst``.
    ctf: per-particle CTF (batch shape ``(B,)`` or scalar); None: no CTF (weights 1).
    aberrations: optics beyond the basic CTF.
    subsets: ``(B,)`` ``rlnRandomSubset`` values (1 or 2); default alternate 1, 2, 1, ...
    work_box: premultiply at this larger box (aliasing-free size, see
        :mod:`mrepo.refine.aliasing`) with the band-limited CTF² as weight; default ``n``.
    dose_weights: optional amplitude weights (e.g. :func:`mrepo.refine.dose.dose_weights`),
        broadcastable to ``(B, n, n//2+1)``: like the CTF, they multiply the data once and
        the weight squared.
    ctf_premultiplied: images are already multiplied by their CTF (``rlnCtfDataAreCtfPremultiplied``).
    padding, batch_size, device, wiener_relative, mask_radius_angstrom: as elsewhere.

    Returns
    -------
    :class:`ReconstructionResult` with numpy half-maps and their FSC.
    """
    from .aliasing import ctf_squared_bandlimited, premultiply_ctf
    from .ctf import ctf_2d
    from .device import pick_device
    from .fsc import fsc as fsc_fn

    dev = pick_device(device if device is not None else "auto")
    imgs = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if imgs.dim() != 3 or imgs.shape[-1] != imgs.shape[-2]:
        raise InvalidInput("images must be (B, n, n)", str(tuple(imgs.shape)))
    b, n = imgs.shape[0], imgs.shape[-1]
    angles = torch.as_tensor(np.asarray(angles_deg, dtype=np.float64)).reshape(b, 3)
    shifts = None
    if shifts_angstrom is not None:
        shifts = torch.as_tensor(np.asarray(shifts_angstrom, dtype=np.float64)).reshape(b, 2)
    if subsets is None:
        halves = torch.arange(b) % 2
    else:
        halves = torch.as_tensor(np.asarray(subsets)).long().reshape(b) - 1
        if bool(((halves < 0) | (halves > 1)).any()):
            raise InvalidInput("random subsets must be 1 or 2", "subsets")
    rec = Reconstructor(n, pixel_size_angstrom, padding=padding, device=dev)
    ctf_b = None if ctf is None else ctf.as_tensors(device=dev, dtype=torch.float32)
    if ctf_b is not None and ctf_b.batch_shape() not in ((), (b,)):
        raise InvalidInput("CTF parameters must be scalars or have one value per image", str(ctf_b.batch_shape()))
    for s in range(0, b, batch_size):
        e = min(b, s + batch_size)
        x = imgs[s:e].to(dev, torch.float32)
        if ctf_b is None:
            xf = rfft2_centered(x)
            w = torch.ones(xf.shape, device=dev)
        else:
            p = ctf_b[s:e] if ctf_b.batch_shape() == (b,) else ctf_b
            if ctf_premultiplied:
                xf = rfft2_centered(x)
            else:
                xf = rfft2_centered(
                    premultiply_ctf(x, p, pixel_size_angstrom, n, work_box=work_box, aberrations=aberrations))
            if work_box is not None and work_box > n:
                w = ctf_squared_bandlimited(p, pixel_size_angstrom, n, work_box, aberrations=aberrations)
            else:
                c = ctf_2d(p, n, pixel_size_angstrom, aberrations=aberrations, device=dev)
                w = (c * c.conj()).real if c.is_complex() else c * c
            w = torch.broadcast_to(w, xf.shape)
        if dose_weights is not None:
            dw = torch.as_tensor(dose_weights, device=dev, dtype=torch.float32)
            if dw.dim() == 3 and dw.shape[0] == b:
                dw = dw[s:e]
            xf = xf * dw
            w = w * dw * dw
        hv = halves[s:e]
        for h in (0, 1):
            sel = torch.nonzero(hv == h).squeeze(1)
            if sel.numel() == 0:
                continue
            sel_d = sel.to(dev)
            rec.insert(
                xf.index_select(0, sel_d),
                w.index_select(0, sel_d),
                angles[s:e].index_select(0, sel).to(dev),
                None if shifts is None else shifts[s:e].index_select(0, sel).to(dev),
                half=h,
            )
    maps = [m.cpu().numpy() for m in rec.reconstruct_halves(wiener_relative=wiener_relative,
                                                            mask_radius_angstrom=mask_radius_angstrom)]
    curve = fsc_fn(maps[0], maps[1], pixel_size_angstrom)
    return ReconstructionResult(half_maps=maps, pixel_size_angstrom=float(pixel_size_angstrom), fsc=curve,
                                counts=[h.count for h in rec.halves])
