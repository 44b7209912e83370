"""Contrast transfer function with RELION's conventions (RELION 3.1+ ``src/ctf.h``, ``ctf.cpp``).

Model
-----
For a spatial frequency ``k = (kx, ky)`` in 1/Å (``kx`` along image x, the
last array axis; ``ky`` along y, rows), after an optional anisotropic
magnification ``k ← M k``:

    Δf(k)   = ΔU cos²(α_k − α_A) + ΔV sin²(α_k − α_A)            (Å, positive = underfocus)
    γ(k)    = −π λ Δf(k) |k|² + (π/2) Cs λ³ |k|⁴ − φ_ps − atan(Q0 / √(1 − Q0²)) + γ_even(k)
    CTF(k)  = −scale · sin γ(k) · exp(−B |k|² / 4) · exp(i γ_odd(k))

``α_k = atan2(ky, kx)``, ``α_A`` = ``rlnDefocusAngle`` (the direction of the U
axis, measured from x towards y), ``λ`` the relativistic electron wavelength,
``Cs`` in Å, ``φ_ps`` = ``rlnPhaseShift`` (degrees in the file, radians here),
``Q0`` = ``rlnAmplitudeContrast``, ``B`` = ``rlnCtfBfactor`` (Å², positive
values dampen; *Warp/M's own* ``Bfactor`` has the opposite sign),
``scale`` = ``rlnCtfScalefactor``. With this sign the CTF is ``+Q0`` at
``k = 0`` and positive in its first lobe (RELION's convention).

Higher-order aberrations follow RELION's ``ObservationModel``: even Zernike
coefficients (``rlnEvenZernike``, radians) add to ``γ``; odd ones
(``rlnOddZernike``) and beam tilt make the CTF complex by
``exp(i γ_odd)``, which multiplies the projection in the forward model
(RELION ``modulatePhase``; it *de*-modulates the data by the conjugate). The
Zernike polynomials are evaluated at ``ρ = |k|`` in 1/Å (not on a unit disk),
``φ = atan2(ky, kx)``, ordered as RELION's ``evenIndexToMN``/``oddIndexToMN``.
Beam tilt ``(τx, τy)`` in mrad is the coma term
``γ_odd = −2π·10⁻³ Cs λ² |k|² (k · τ)``, which is what RELION's
``TiltHelper::insertTilt`` adds to the odd coefficients 0, 1, 3, 4.

Everything is torch, batched and differentiable in the parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Sequence, Union

import torch

from ..errors import InvalidInput
from .fourier import freq_grid_2d

__all__ = [
    "CtfParams",
    "Aberrations",
    "electron_wavelength_angstrom",
    "ctf_phase",
    "odd_phase",
    "ctf_values",
    "ctf_2d",
    "zernike_cartesian",
    "zernike_even_index_to_mn",
    "zernike_odd_index_to_mn",
]

Scalar = Union[float, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class CtfParams:
    """CTF parameters in RELION's units; each field a float or a tensor of a common batch shape.

    Attributes
    ----------
    voltage_kv: acceleration voltage (kV), ``rlnVoltage``.
    cs_mm: spherical aberration (mm), ``rlnSphericalAberration``.
    amplitude_contrast: fraction in [0, 1), ``rlnAmplitudeContrast``.
    defocus_u_angstrom, defocus_v_angstrom: defocus along U and V (Å, positive =
        underfocus), ``rlnDefocusU``/``rlnDefocusV``.
    defocus_angle_deg: angle of the U axis from x towards y (degrees), ``rlnDefocusAngle``.
    phase_shift_deg: phase-plate shift (degrees), ``rlnPhaseShift``.
    bfactor_a2: envelope ``exp(-B k²/4)`` (Å²; positive dampens), ``rlnCtfBfactor``.
    scale: overall factor, ``rlnCtfScalefactor``.

    Fields may be tensors of any broadcastable batch shape (e.g. ``(n_particles,)``);
    results then have that batch shape in front.
    """

    voltage_kv: Scalar
    cs_mm: Scalar
    amplitude_contrast: Scalar
    defocus_u_angstrom: Scalar
    defocus_v_angstrom: Scalar
    defocus_angle_deg: Scalar = 0.0
    phase_shift_deg: Scalar = 0.0
    bfactor_a2: Scalar = 0.0
    scale: Scalar = 1.0

    def batch_shape(self) -> torch.Size:
        """Broadcast shape of all fields (``()`` when all are scalars)."""
        shapes = [torch.as_tensor(getattr(self, f.name)).shape for f in fields(self)]
        try:
            return torch.broadcast_shapes(*shapes)
        except RuntimeError as exc:
            raise InvalidInput(f"CTF parameter shapes do not broadcast: {exc}", str(shapes)) from None

    def device(self) -> torch.device | None:
        """Device of the first tensor field, or None when all fields are Python numbers."""
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                return v.device
        return None

    def as_tensors(self, *, device=None, dtype=torch.float32) -> "CtfParams":
        """A copy whose fields are tensors of the full batch shape, on ``device``, of ``dtype``.

        Gradients flow from the result back to tensor fields of ``self``.
        """
        shape = self.batch_shape()
        device = device if device is not None else self.device()
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            v = v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) else torch.tensor(
                v, device=device, dtype=dtype)
            out[f.name] = v.expand(shape)
        return replace(self, **out)

    def validate(self) -> None:
        """Raise :class:`InvalidInput` for values RELION also rejects."""
        q0 = torch.as_tensor(self.amplitude_contrast)
        if bool(((q0 < 0) | (q0 >= 1)).any()):
            raise InvalidInput("amplitude contrast must be in [0, 1)", str(q0.tolist()))
        kv = torch.as_tensor(self.voltage_kv)
        if bool((kv <= 0).any()):
            raise InvalidInput("voltage must be positive (kV)", str(kv.tolist()))

    def __getitem__(self, index) -> "CtfParams":
        """Index the batch: tensor fields are broadcast to the batch shape and indexed;
        Python numbers (shared by the whole batch) are kept as they are."""
        shape = self.batch_shape()
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.expand(shape)[index] if isinstance(v, torch.Tensor) else v
        return replace(self, **out)


@dataclass(frozen=True, kw_only=True)
class Aberrations:
    """Optics beyond the basic CTF (RELION optics-group columns); all optional.

    Attributes
    ----------
    beam_tilt_mrad: ``(..., 2)`` ``(rlnBeamTiltX, rlnBeamTiltY)`` in mrad.
    odd_zernike: ``(..., n_odd)`` ``rlnOddZernike`` coefficients (rad, ρ in 1/Å).
    even_zernike: ``(..., n_even)`` ``rlnEvenZernike`` coefficients (rad, ρ in 1/Å).
    mag_matrix: ``(..., 2, 2)`` ``rlnMagMat00..11``, acting on ``(kx, ky)``.
    """

    beam_tilt_mrad: torch.Tensor | Sequence[float] | None = None
    odd_zernike: torch.Tensor | Sequence[float] | None = None
    even_zernike: torch.Tensor | Sequence[float] | None = None
    mag_matrix: torch.Tensor | Sequence[Sequence[float]] | None = None

    @property
    def has_odd(self) -> bool:
        return self.beam_tilt_mrad is not None or self.odd_zernike is not None


def electron_wavelength_angstrom(voltage_kv: Scalar) -> Scalar:
    """Relativistic electron wavelength (Å) for an acceleration voltage in kV.

    ``λ = h / sqrt(2 m e V (1 + e V / (2 m c²)))`` written, as RELION does, as
    ``12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` with ``V`` in volts.
    """
    if isinstance(voltage_kv, torch.Tensor):
        v = voltage_kv * 1e3
        return 12.2643247 / torch.sqrt(v * (1.0 + 0.978466e-6 * v))
    v = float(voltage_kv) * 1e3
    return 12.2643247 / math.sqrt(v * (1.0 + 0.978466e-6 * v))


# ----------------------------------------------------------------------------- Zernike


def zernike_even_index_to_mn(i: int) -> tuple[int, int]:
    """RELION's ordering of even Zernike coefficients: index -> (m, n)."""
    k = int(math.isqrt(i))
    return 2 * (i - k * k - k), 2 * k


def zernike_odd_index_to_mn(i: int) -> tuple[int, int]:
    """RELION's ordering of odd Zernike coefficients: index -> (m, n)."""
    k = int((math.sqrt(1 + 4 * i) - 1.0) / 2.0)
    i0 = k * k + k
    n = 2 * k + 1
    return 2 * (i - i0) - n, n


def zernike_cartesian(m: int, n: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Zernike polynomial ``Z_n^m`` at Cartesian ``(x, y)`` (no unit-disk normalisation).

    ``R_n^|m|(ρ) cos(m φ)`` for ``m >= 0``, ``R_n^|m|(ρ) sin(|m| φ)`` for ``m < 0``,
    with ``ρ = |(x, y)|``, ``φ = atan2(y, x)``. Polynomial in ``x, y``, so its
    gradient is finite everywhere.
    """
    am = abs(m)
    if am > n or (n - am) % 2:
        raise InvalidInput("Zernike indices must satisfy |m| <= n and n - |m| even", f"m={m}, n={n}")
    rho2 = x * x + y * y
    # R_n^|m|(ρ) = ρ^|m| · Σ_k c_k ρ^(n - |m| - 2k)
    radial = torch.zeros_like(rho2)
    for k in range((n - am) // 2 + 1):
        c = (-1) ** k * math.factorial(n - k) / (
            math.factorial(k) * math.factorial((n + am) // 2 - k) * math.factorial((n - am) // 2 - k)
        )
        radial = radial + c * rho2 ** ((n - am) // 2 - k)
    # ρ^|m| cos(mφ) and ρ^|m| sin(|m|φ) are Re/Im of (x + i y)^|m|
    re = torch.ones_like(x)
    im = torch.zeros_like(x)
    for _ in range(am):
        re, im = re * x - im * y, re * y + im * x
    return radial * (re if m >= 0 else im)


def _zernike_sum(coeffs, kx: torch.Tensor, ky: torch.Tensor, index_to_mn, n_grid: int) -> torch.Tensor:
    c = torch.as_tensor(coeffs, device=kx.device, dtype=kx.dtype)
    out = torch.zeros((), device=kx.device, dtype=kx.dtype)
    for i in range(c.shape[-1]):
        m, n = index_to_mn(i)
        ci = c[..., i].reshape(c.shape[:-1] + (1,) * n_grid)
        out = out + ci * zernike_cartesian(m, n, kx, ky)
    return out


# ----------------------------------------------------------------------------- CTF


def _field(p: CtfParams, name: str, n_grid: int, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(getattr(p, name), device=like.device, dtype=like.dtype)
    return v.reshape(v.shape + (1,) * n_grid)


def _apply_mag(kx: torch.Tensor, ky: torch.Tensor, mag_matrix, n_grid: int):
    if mag_matrix is None:
        return kx, ky
    m = torch.as_tensor(mag_matrix, device=kx.device, dtype=kx.dtype)
    if m.shape[-2:] != (2, 2):
        raise InvalidInput("magnification matrix must have shape (..., 2, 2)", str(tuple(m.shape)))
    m = m.reshape(m.shape[:-2] + (1,) * n_grid + (2, 2))
    return m[..., 0, 0] * kx + m[..., 0, 1] * ky, m[..., 1, 0] * kx + m[..., 1, 1] * ky


def ctf_phase(
    params: CtfParams,
    kx: torch.Tensor,
    ky: torch.Tensor,
    *,
    aberrations: Aberrations | None = None,
) -> torch.Tensor:
    """RELION's CTF phase ``γ`` (radians, RELION's ``getLowOrderGamma`` + even Zernike).

    Parameters
    ----------
    params: CTF parameters with batch shape ``S``.
    kx, ky: frequencies in 1/Å, any (equal) grid shape ``G``.
    aberrations: optional ``mag_matrix`` and ``even_zernike`` (odd terms are ignored here).

    Returns
    -------
    ``(*S, *G)`` tensor; ``CTF = -scale · sin(γ) · envelope``.
    """
    n_grid = kx.dim()
    ab = aberrations or Aberrations()
    kx, ky = _apply_mag(kx, ky, ab.mag_matrix, n_grid)
    du = _field(params, "defocus_u_angstrom", n_grid, kx)
    dv = _field(params, "defocus_v_angstrom", n_grid, kx)
    ang = torch.deg2rad(_field(params, "defocus_angle_deg", n_grid, kx))
    lam = electron_wavelength_angstrom(_field(params, "voltage_kv", n_grid, kx))
    cs = _field(params, "cs_mm", n_grid, kx) * 1e7
    q0 = _field(params, "amplitude_contrast", n_grid, kx)
    ps = torch.deg2rad(_field(params, "phase_shift_deg", n_grid, kx))
    # Defocus as a quadratic form: kᵀ D k with U along (cos α, sin α).
    c, s = torch.cos(ang), torch.sin(ang)
    ku = kx * c + ky * s
    kv = -kx * s + ky * c
    defocus_k2 = du * ku * ku + dv * kv * kv  # Δf(k)·|k|²
    k2 = kx * kx + ky * ky
    gamma = (
        -math.pi * lam * defocus_k2
        + 0.5 * math.pi * cs * lam**3 * k2 * k2
        - ps
        - torch.atan2(q0, torch.sqrt(1.0 - q0 * q0))
    )
    if ab.even_zernike is not None:
        gamma = gamma + _zernike_sum(ab.even_zernike, kx, ky, zernike_even_index_to_mn, n_grid)
    return gamma


def odd_phase(
    params: CtfParams,
    kx: torch.Tensor,
    ky: torch.Tensor,
    *,
    aberrations: Aberrations,
) -> torch.Tensor:
    """Antisymmetric aberration phase ``γ_odd`` (radians): beam tilt (coma) plus odd Zernike terms.

    Shapes as :func:`ctf_phase`; the forward model multiplies projections by
    ``exp(i γ_odd)``.
    """
    n_grid = kx.dim()
    kx, ky = _apply_mag(kx, ky, aberrations.mag_matrix, n_grid)
    phase = torch.zeros((), device=kx.device, dtype=kx.dtype)
    if aberrations.beam_tilt_mrad is not None:
        tilt = torch.as_tensor(aberrations.beam_tilt_mrad, device=kx.device, dtype=kx.dtype)
        tilt = tilt.reshape(tilt.shape[:-1] + (1,) * n_grid + (2,))
        lam = electron_wavelength_angstrom(_field(params, "voltage_kv", n_grid, kx))
        cs = _field(params, "cs_mm", n_grid, kx) * 1e7
        k2 = kx * kx + ky * ky
        phase = phase - 2e-3 * math.pi * cs * lam * lam * k2 * (kx * tilt[..., 0] + ky * tilt[..., 1])
    if aberrations.odd_zernike is not None:
        phase = phase + _zernike_sum(aberrations.odd_zernike, kx, ky, zernike_odd_index_to_mn, n_grid)
    return phase


def ctf_values(
    params: CtfParams,
    kx: torch.Tensor,
    ky: torch.Tensor,
    *,
    aberrations: Aberrations | None = None,
    damping: bool = True,
) -> torch.Tensor:
    """CTF at arbitrary frequencies ``(kx, ky)`` in 1/Å.

    Returns ``(*S, *G)``: real, or complex (``CTF · exp(i γ_odd)``) when the
    aberrations include beam tilt or odd Zernike terms.
    """
    params.validate()
    ab = aberrations or Aberrations()
    gamma = ctf_phase(params, kx, ky, aberrations=ab)
    n_grid = kx.dim()
    out = -_field(params, "scale", n_grid, kx) * torch.sin(gamma)
    if damping:
        kxm, kym = _apply_mag(kx, ky, ab.mag_matrix, n_grid)
        bfac = _field(params, "bfactor_a2", n_grid, kx)
        out = out * torch.exp(-0.25 * bfac * (kxm * kxm + kym * kym))
    if ab.has_odd:
        out = out * torch.polar(torch.ones_like(out), odd_phase(params, kx, ky, aberrations=ab))
    return out


def ctf_2d(
    params: CtfParams,
    box: int,
    pixel_size_angstrom: float,
    *,
    rfft: bool = True,
    centered: bool = False,
    aberrations: Aberrations | None = None,
    beam_tilt_mrad=None,
    odd_zernike=None,
    even_zernike=None,
    damping: bool = True,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """CTF image on the Fourier grid of a ``box``-pixel image.

    Parameters
    ----------
    params: CTF parameters, batch shape ``S``.
    box: image size (px).
    pixel_size_angstrom: pixel size (Å/px).
    rfft: half layout ``(box, box // 2 + 1)`` (default) or full ``(box, box)``.
    centered: DC in the middle (``fftshift`` of the full axes) instead of at index 0.
    aberrations: beam tilt, Zernike terms, magnification matrix (see :class:`Aberrations`).
    beam_tilt_mrad, odd_zernike, even_zernike: shortcuts for the same fields.
    damping: apply the B-factor envelope.
    device, dtype: where and in what real precision to compute (device defaults
        to that of the tensor fields of ``params``, else the CPU).

    Returns
    -------
    ``(*S, box, box // 2 + 1)`` (or ``(*S, box, box)``): real, or complex when
    odd aberrations are present. Frequencies as :func:`mrepo.refine.fourier.freq_grid_2d`.
    """
    ab = aberrations or Aberrations()
    if beam_tilt_mrad is not None or odd_zernike is not None or even_zernike is not None:
        ab = replace(
            ab,
            beam_tilt_mrad=beam_tilt_mrad if beam_tilt_mrad is not None else ab.beam_tilt_mrad,
            odd_zernike=odd_zernike if odd_zernike is not None else ab.odd_zernike,
            even_zernike=even_zernike if even_zernike is not None else ab.even_zernike,
        )
    device = device if device is not None else params.device()
    ky, kx = freq_grid_2d(box, pixel_size_angstrom, rfft=rfft, centered=centered, device=device, dtype=dtype)
    return ctf_values(params, kx, ky, aberrations=ab, damping=damping)
