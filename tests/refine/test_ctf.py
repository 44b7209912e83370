"""CTF: RELION's conventions against an independent formula and against real STAR files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import starfile
import torch
from scipy import constants

from mrepo.errors import InvalidInput
from mrepo.refine.ctf import (
    Aberrations,
    CtfParams,
    ctf_2d,
    ctf_values,
    electron_wavelength_angstrom,
    odd_phase,
    zernike_cartesian,
    zernike_even_index_to_mn,
    zernike_odd_index_to_mn,
)


def wavelength_from_constants(kv: float) -> float:
    """λ = h / sqrt(2 m e V (1 + e V / (2 m c²))), in Å."""
    v = kv * 1e3
    m, e, h, c = constants.m_e, constants.e, constants.h, constants.c
    return h / math.sqrt(2 * m * e * v * (1 + e * v / (2 * m * c * c))) * 1e10


def wavelength_relion(kv: float) -> float:
    """RELION's numerical form of the same expression (constants as in RELION's ctf.cpp)."""
    v = kv * 1e3
    return 12.2643247 / math.sqrt(v * (1 + 0.978466e-6 * v))


def ctf_reference(kx, ky, *, kv, cs_mm, q0, du, dv, ang_deg, ps_deg=0.0, bfac=0.0, scale=1.0):
    """Independent CTF (Wade 1992 / CTFFIND4 form, RELION's overall sign).

    χ = π λ Δf(θ) k² − (π/2) Cs λ³ k⁴ + φ,  Δf(θ) = ½[ΔU + ΔV + (ΔU − ΔV) cos 2(θ − θ_A)],
    CTF = scale · (√(1 − Q0²) sin χ + Q0 cos χ) · exp(−B k² / 4)
    """
    lam = wavelength_relion(kv)
    cs = cs_mm * 1e7
    k2 = kx**2 + ky**2
    theta = np.arctan2(ky, kx)
    dfz = 0.5 * (du + dv + (du - dv) * np.cos(2 * (theta - np.radians(ang_deg))))
    chi = np.pi * lam * dfz * k2 - 0.5 * np.pi * cs * lam**3 * k2**2 + np.radians(ps_deg)
    return scale * (np.sqrt(1 - q0**2) * np.sin(chi) + q0 * np.cos(chi)) * np.exp(-bfac * k2 / 4)


@pytest.mark.parametrize("kv", [100.0, 200.0, 300.0])
def test_wavelength_matches_physical_constants(kv):
    # RELION's constant 12.2643247 is 6e-6 (relative) away from CODATA 2018 values.
    assert electron_wavelength_angstrom(kv) == pytest.approx(wavelength_from_constants(kv), rel=1e-5)
    assert electron_wavelength_angstrom(kv) == pytest.approx(wavelength_relion(kv), rel=1e-12)
    t = electron_wavelength_angstrom(torch.tensor([kv], dtype=torch.float64))
    assert float(t[0]) == pytest.approx(wavelength_relion(kv), rel=1e-12)
    # textbook value at 300 kV: 0.01969 Å
    assert electron_wavelength_angstrom(300.0) == pytest.approx(0.019687, abs=2e-6)


@pytest.mark.parametrize(
    "p",
    [
        dict(kv=300.0, cs_mm=2.7, q0=0.07, du=15000.0, dv=13500.0, ang_deg=33.0),
        dict(kv=200.0, cs_mm=1.4, q0=0.1, du=8000.0, dv=9000.0, ang_deg=-160.0, ps_deg=35.0, bfac=50.0, scale=0.8),
        dict(kv=300.0, cs_mm=0.01, q0=0.0, du=25000.0, dv=25000.0, ang_deg=0.0),
    ],
)
def test_ctf_2d_matches_independent_formula(p):
    box, px = 96, 1.1
    params = CtfParams(
        voltage_kv=p["kv"], cs_mm=p["cs_mm"], amplitude_contrast=p["q0"],
        defocus_u_angstrom=p["du"], defocus_v_angstrom=p["dv"], defocus_angle_deg=p["ang_deg"],
        phase_shift_deg=p.get("ps_deg", 0.0), bfactor_a2=p.get("bfac", 0.0), scale=p.get("scale", 1.0),
    )
    got = ctf_2d(params, box, px, dtype=torch.float64).numpy()
    ky = np.fft.fftfreq(box, d=px)[:, None] * np.ones((1, box // 2 + 1))
    kx = np.arange(box // 2 + 1)[None, :] / (box * px) * np.ones((box, 1))
    want = ctf_reference(kx, ky, **p)
    assert got.shape == (box, box // 2 + 1)
    np.testing.assert_allclose(got, want, atol=2e-7)
    # Full and centred layouts hold the same values (the full layout's Nyquist column is kx = -box/2).
    full = ctf_2d(params, box, px, rfft=False, centered=True, dtype=torch.float64).numpy()
    np.testing.assert_allclose(np.fft.ifftshift(full)[:, : box // 2], got[:, : box // 2], atol=1e-12)
    # RELION's sign: +scale·sin(atan(Q0/√(1−Q0²)) + phase shift) at DC (+Q0 without phase plate).
    k3 = math.atan(p["q0"] / math.sqrt(1 - p["q0"] ** 2))
    dc = p.get("scale", 1.0) * math.sin(k3 + math.radians(p.get("ps_deg", 0.0)))
    assert got[0, 0] == pytest.approx(dc, abs=1e-12)


def test_ctf_batched_and_differentiable():
    du = torch.tensor([10000.0, 20000.0, 30000.0], dtype=torch.float64, requires_grad=True)
    params = CtfParams(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1,
                       defocus_u_angstrom=du, defocus_v_angstrom=du - 500.0, defocus_angle_deg=10.0)
    c = ctf_2d(params, 64, 1.0, dtype=torch.float64)
    assert c.shape == (3, 64, 33)
    for i in range(3):
        single = ctf_2d(params[i], 64, 1.0, dtype=torch.float64)
        torch.testing.assert_close(c[i], single)
    c.sum().backward()
    # d CTF / d ΔU at one pixel, vs. the derivative of the independent formula
    h = 1e-3
    kx, ky = 5 / 64.0, 3 / 64.0
    f = lambda d: ctf_reference(kx, ky, kv=300.0, cs_mm=2.7, q0=0.1, du=d, dv=d - 500.0, ang_deg=10.0)  # noqa: E731
    du.grad = None
    ctf_2d(params, 64, 1.0, dtype=torch.float64)[1, 3, 5].backward()
    fd = (f(20000.0 + h) - f(20000.0 - h)) / (2 * h)
    assert float(du.grad[1]) == pytest.approx(fd, rel=1e-5)


def test_invalid_amplitude_contrast_is_rejected():
    with pytest.raises(InvalidInput):
        ctf_2d(CtfParams(voltage_kv=300, cs_mm=2.7, amplitude_contrast=1.2,
                         defocus_u_angstrom=1e4, defocus_v_angstrom=1e4), 32, 1.0)


def _optics_for(particles, optics):
    return optics.set_index("rlnOpticsGroup").loc[particles["rlnOpticsGroup"]]


@pytest.mark.parametrize(
    "name,pixel_col",
    [("relion31_particles.star", "rlnImagePixelSize"), ("relion5_particles.star", "rlnImagePixelSize")],
)
def test_ctf_zeros_along_u_and_v_match_fixture_defocus(fixtures, name, pixel_col):
    """Find the CTF zeros along the U and V directions of real particles and recover ΔU, ΔV.

    Zeros satisfy χ + atan(Q0/√(1−Q0²)) = nπ; with Cs known, k_n² is the root of a
    quadratic, so λΔf = (n − K3/π + ½ Cs λ³ k⁴) / k² for each zero: the recovered
    defocus must equal the file's rlnDefocusU along U and rlnDefocusV along V.
    """
    star = starfile.read(fixtures / "relion" / name)
    parts, optics = star["particles"].head(4), star["optics"]
    opt = _optics_for(parts, optics)
    kv = opt["rlnVoltage"].to_numpy(float)
    cs = opt["rlnSphericalAberration"].to_numpy(float)
    q0 = opt["rlnAmplitudeContrast"].to_numpy(float)
    du = parts["rlnDefocusU"].to_numpy(float)
    dv = parts["rlnDefocusV"].to_numpy(float)
    ang = parts["rlnDefocusAngle"].to_numpy(float)
    px = float(opt[pixel_col].iloc[0])
    params = CtfParams(voltage_kv=torch.tensor(kv), cs_mm=torch.tensor(cs), amplitude_contrast=torch.tensor(q0),
                       defocus_u_angstrom=torch.tensor(du), defocus_v_angstrom=torch.tensor(dv),
                       defocus_angle_deg=torch.tensor(ang))
    k = torch.linspace(1e-4, 0.5 / px, 20001, dtype=torch.float64)
    for axis, want in (("U", du), ("V", dv)):
        a = torch.deg2rad(torch.tensor(ang)) + (0.0 if axis == "U" else math.pi / 2)
        kx = k[None, :] * torch.cos(a)[:, None]
        ky = k[None, :] * torch.sin(a)[:, None]
        # ctf_values broadcasts params (4,) against a (4, K) grid only through the grid
        # axes, so evaluate one particle at a time on its own line.
        for i in range(len(du)):
            c = ctf_values(params[i], kx[i], ky[i]).numpy()
            s = np.nonzero(np.sign(c[:-1]) != np.sign(c[1:]))[0][:6]
            assert len(s) >= 4
            k0 = k.numpy()[s] - c[s] * (k.numpy()[s + 1] - k.numpy()[s]) / (c[s + 1] - c[s])
            lam = wavelength_relion(kv[i])
            k3 = math.atan(q0[i] / math.sqrt(1 - q0[i] ** 2))
            n = np.arange(1, len(k0) + 1)
            dfs = (n - k3 / math.pi + 0.5 * cs[i] * 1e7 * lam**3 * k0**4) / (lam * k0**2)
            np.testing.assert_allclose(dfs, want[i], rtol=2e-4, err_msg=f"{name} particle {i} axis {axis}")
        # U and V differ in these files by more than the tolerance, so the angle convention is tested.
        assert np.all(np.abs(du - dv) / du > 1e-3)


def _parse_list(text: str) -> list[float]:
    return [float(t) for t in text.strip("[]").split(",") if t]


def test_relion5_optics_aberrations(fixtures):
    """Beam tilt, odd/even Zernike terms and the magnification matrix from a RELION 5 optics table."""
    star = starfile.read(fixtures / "relion" / "relion5_particles.star")
    o = star["optics"].iloc[0]
    p = star["particles"].iloc[0]
    params = CtfParams(voltage_kv=float(o["rlnVoltage"]), cs_mm=float(o["rlnSphericalAberration"]),
                       amplitude_contrast=float(o["rlnAmplitudeContrast"]),
                       defocus_u_angstrom=float(p["rlnDefocusU"]), defocus_v_angstrom=float(p["rlnDefocusV"]),
                       defocus_angle_deg=float(p["rlnDefocusAngle"]))
    tilt = [float(o["rlnBeamTiltX"]), float(o["rlnBeamTiltY"])]
    odd = _parse_list(o["rlnOddZernike"])
    even = _parse_list(o["rlnEvenZernike"])
    mag = [[float(o["rlnMagMat00"]), float(o["rlnMagMat01"])], [float(o["rlnMagMat10"]), float(o["rlnMagMat11"])]]
    box, px = int(o["rlnImageSize"]), float(o["rlnImagePixelSize"])
    ab = Aberrations(beam_tilt_mrad=tilt, odd_zernike=odd, even_zernike=even, mag_matrix=mag)
    c = ctf_2d(params, box, px, aberrations=ab, dtype=torch.float64)
    assert c.is_complex() and c.shape == (box, box // 2 + 1)
    # |CTF| is the CTF without odd terms.
    c_even = ctf_2d(params, box, px, aberrations=Aberrations(even_zernike=even, mag_matrix=mag), dtype=torch.float64)
    torch.testing.assert_close(c.abs(), c_even.abs())
    # Friedel symmetry of the complex transfer function: H(-k) = conj H(k).
    full = ctf_2d(params, box, px, rfft=False, aberrations=ab, dtype=torch.float64)
    neg = torch.remainder(-torch.arange(box), box)
    inner = torch.arange(box) != box // 2  # the Nyquist row/column is its own mate only up to aliasing
    torch.testing.assert_close(full[neg][:, neg][inner][:, inner], full.conj()[inner][:, inner])
    # Beam tilt equals RELION's TiltHelper::insertTilt conversion to odd Zernike coefficients:
    # Z3x = -Cs·2e4·π·λ²·τx/3 goes into coefficients 1 (+2 Z3x) and 4 (+Z3x), likewise y into 0 and 3.
    lam = wavelength_relion(float(o["rlnVoltage"]))
    scale = float(o["rlnSphericalAberration"]) * 20000 * lam * lam * math.pi
    z3x, z3y = -scale * tilt[0] / 3, -scale * tilt[1] / 3
    coeffs = [2 * z3y, 2 * z3x, 0.0, z3y, z3x]
    ky, kx = torch.meshgrid(torch.fft.fftfreq(box, d=px, dtype=torch.float64),
                            torch.arange(box // 2 + 1, dtype=torch.float64) / (box * px), indexing="ij")
    via_tilt = odd_phase(params, kx, ky, aberrations=Aberrations(beam_tilt_mrad=tilt))
    via_zern = odd_phase(params, kx, ky, aberrations=Aberrations(odd_zernike=coeffs))
    torch.testing.assert_close(via_tilt, via_zern, atol=1e-10, rtol=1e-8)
    # The magnification matrix acts on (kx, ky) before everything else.
    m = torch.tensor(mag, dtype=torch.float64)
    no_mag = ctf_values(params, m[0, 0] * kx + m[0, 1] * ky, m[1, 0] * kx + m[1, 1] * ky)
    with_mag = ctf_values(params, kx, ky, aberrations=Aberrations(mag_matrix=mag))
    torch.testing.assert_close(with_mag, no_mag)


def test_zernike_polynomials_and_relion_ordering():
    x = torch.tensor([0.3, -0.2, 0.05], dtype=torch.float64)
    y = torch.tensor([0.1, 0.4, -0.3], dtype=torch.float64)
    r2 = x * x + y * y
    phi = torch.atan2(y, x)
    rho = torch.sqrt(r2)
    cases = {
        (0, 0): torch.ones_like(x),
        (-1, 1): y,
        (1, 1): x,
        (-2, 2): r2 * torch.sin(2 * phi),
        (0, 2): 2 * r2 - 1,
        (2, 2): r2 * torch.cos(2 * phi),
        (-1, 3): (3 * rho**3 - 2 * rho) * torch.sin(phi),
        (1, 3): (3 * rho**3 - 2 * rho) * torch.cos(phi),
        (3, 3): rho**3 * torch.cos(3 * phi),
        (0, 4): 6 * r2**2 - 6 * r2 + 1,
        (-4, 4): r2**2 * torch.sin(4 * phi),
    }
    for (m, n), want in cases.items():
        torch.testing.assert_close(zernike_cartesian(m, n, x, y), want)
    assert [zernike_even_index_to_mn(i) for i in range(9)] == [
        (0, 0), (-2, 2), (0, 2), (2, 2), (-4, 4), (-2, 4), (0, 4), (2, 4), (4, 4)]
    assert [zernike_odd_index_to_mn(i) for i in range(6)] == [(-1, 1), (1, 1), (-3, 3), (-1, 3), (1, 3), (3, 3)]
