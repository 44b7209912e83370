"""Fourier back-projection and reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrepo.errors import InvalidInput
from mrepo.refine.aliasing import premultiply_ctf
from mrepo.refine.backprojection import (
    Reconstructor,
    backproject,
    new_accumulator,
    reconstruct,
    reconstruct_from_particles,
)
from mrepo.refine.ctf import CtfParams, ctf_2d
from mrepo.refine.fourier import irfft2_centered, rfft2_centered
from mrepo.refine.fsc import fsc
from mrepo.refine.projection import FourierVolume, disk_pixels, prepare_volume, project
from refine_helpers import lowpass, random_euler, random_map


def test_projection_and_backprojection_are_adjoint():
    """<P F, y> = <F, Pᵀ y>: the back-projector writes exactly where the projector reads."""
    n, px = 16, 1.3
    acc = new_accumulator(n, px, dtype=torch.float64)
    p = acc.padded_box
    g = torch.Generator().manual_seed(0)
    f = torch.randn((p, p, p // 2 + 1), dtype=torch.complex128, generator=g)
    ang = torch.tensor(random_euler(7, seed=1))
    sh = torch.randn((7, 2), dtype=torch.float64, generator=g)
    y = torch.randn((7, n, n // 2 + 1), dtype=torch.complex128, generator=g)
    flat, _, _ = disk_pixels(n, half_kx0=True)
    mask = torch.zeros(n * (n // 2 + 1), dtype=torch.float64)
    mask[flat] = 1
    y = y * mask.reshape(n, n // 2 + 1)
    proj = project(FourierVolume.from_rfft(f, n, px), ang, sh)
    lhs = (y.conj() * proj).real.sum()
    backproject(acc, y, torch.zeros(1, dtype=torch.float64), ang, sh)
    rhs = (acc.data.conj() * f).real.sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-10)


def test_noiseless_reconstruction_matches_truth():
    """Many noiseless projections (random angles and origins) give back the map."""
    n, px, count = 64, 1.0, 2000
    truth = random_map(n, sigma_px=0.7, seed=0)
    fv = prepare_volume(truth, px)
    ang = torch.tensor(random_euler(count, seed=2))
    sh = torch.tensor(np.random.default_rng(3).uniform(-4, 4, (count, 2)))
    rec = Reconstructor(n, px, n_halves=1)
    for s in range(0, count, 500):
        rec.insert(project(fv, ang[s:s + 500], sh[s:s + 500]), torch.ones(1), ang[s:s + 500], sh[s:s + 500])
    m = rec.reconstruct(0).numpy()
    curve = fsc(m, truth, px)
    # every shell up to 31/32 of Nyquist
    assert curve.fsc[1:32].min() > 0.99, curve.fsc
    low = lowpass(truth, n / 2)
    assert np.linalg.norm(m - low) / np.linalg.norm(low) < 0.06
    # without the gridding correction amplitudes are off by the sinc² apodisation
    m_raw = reconstruct(rec.halves[0], gridding_correction=False).numpy()
    assert np.linalg.norm(m_raw - low) > 1.5 * np.linalg.norm(m - low)


def _simulate(truth, px, ang, ctf, noise_sigma, seed):
    """Particle images: projection, CTF applied at twice the box, cropped, plus white noise."""
    n = truth.shape[0]
    fv = prepare_volume(truth, px)
    imgs = []
    g = torch.Generator().manual_seed(seed)
    for s in range(0, len(ang), 250):
        p = ctf[s:s + 250]
        proj = irfft2_centered(project(fv, ang[s:s + 250]), n)
        # the micrograph: CTF applied at a larger box, cropped to the particle box
        x = premultiply_ctf(proj, p, px, n, work_box=2 * n)
        imgs.append(x + noise_sigma * torch.randn(x.shape, generator=g))
    return torch.cat(imgs)


def test_ctf_weighting_beats_no_ctf_correction():
    n, px, count = 48, 2.0, 1500
    truth = lowpass(random_map(n, sigma_px=0.8, seed=4), n / 2)
    rng = np.random.default_rng(5)
    ang = torch.tensor(random_euler(count, seed=6))
    df = torch.tensor(rng.uniform(8000, 25000, count))
    ctf = CtfParams(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07, defocus_u_angstrom=df,
                    defocus_v_angstrom=df - 200.0, defocus_angle_deg=torch.tensor(rng.uniform(0, 180, count)))
    imgs = _simulate(truth, px, ang, ctf, noise_sigma=1.0, seed=7)
    with_ctf = Reconstructor(n, px, n_halves=1)
    without = Reconstructor(n, px, n_halves=1)
    for s in range(0, count, 500):
        x, p, a = imgs[s:s + 500], ctf[s:s + 500], ang[s:s + 500]
        c = ctf_2d(p, n, px)
        with_ctf.insert(rfft2_centered(x) * c, c * c, a)
        without.insert(rfft2_centered(x), torch.ones(1), a)
    f_ctf = fsc(with_ctf.reconstruct(0).numpy(), truth, px).fsc
    f_none = fsc(without.reconstruct(0).numpy(), truth, px).fsc
    band = slice(2, n // 2)
    print("FSC vs truth with CTF weighting:", np.round(f_ctf, 3))
    print("FSC vs truth without:", np.round(f_none, 3))
    assert f_ctf[band].mean() > 0.8, f_ctf
    assert f_none[band].mean() < 0.5, f_none
    assert np.all(f_ctf[4:n // 2 - 2] > f_none[4:n // 2 - 2])


def test_reconstruct_from_particles_half_maps():
    n, px, count = 32, 3.0, 1200
    truth = lowpass(random_map(n, sigma_px=0.8, seed=8), n / 2)
    rng = np.random.default_rng(9)
    ang = random_euler(count, seed=10)
    df = torch.tensor(rng.uniform(10000, 20000, count))
    ctf = CtfParams(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1, defocus_u_angstrom=df,
                    defocus_v_angstrom=df, defocus_angle_deg=0.0)
    imgs = _simulate(truth, px, torch.tensor(ang), ctf, noise_sigma=1.0, seed=11)
    origins = rng.uniform(-6, 6, (count, 2))  # Å; shift the images to match (particle at -origin)
    shifted = irfft2_centered(
        rfft2_centered(imgs) * torch.polar(torch.ones(1), _phase(n, px, torch.tensor(origins)).float()), n)
    subsets = 1 + (rng.uniform(size=count) < 0.5)
    res = reconstruct_from_particles(shifted.numpy(), ang, px, shifts_angstrom=origins, ctf=ctf,
                                     subsets=subsets, device="cpu")
    assert res.counts == [int((subsets == 1).sum()), int((subsets == 2).sum())]
    assert res.half_maps[0].shape == (n, n, n)
    assert res.fsc.fsc[1:8].min() > 0.9
    assert fsc(res.full_map, truth, px).fsc[1:10].min() > 0.9
    with pytest.raises(InvalidInput):
        reconstruct_from_particles(shifted.numpy(), ang, px, subsets=np.full(count, 3))


def _phase(n, px, origins):
    ky = torch.fft.fftfreq(n, 1 / n, dtype=torch.float64)[:, None]
    kx = torch.arange(n // 2 + 1, dtype=torch.float64)[None, :]
    return (2 * np.pi / (n * px)) * (kx * origins[:, 0, None, None] + ky * origins[:, 1, None, None])


def test_wiener_constant_and_mask_options():
    n, px = 24, 2.0
    truth = random_map(n, seed=12)
    fv = prepare_volume(truth, px)
    ang = torch.tensor(random_euler(400, seed=13))
    acc = new_accumulator(n, px)
    backproject(acc, project(fv, ang), torch.ones(1), ang)
    base = reconstruct(acc).numpy()
    # a huge constant Wiener term damps the map, a per-shell one only where it is large
    damped = reconstruct(acc, wiener=1e6).numpy()
    assert np.abs(damped).max() < 1e-3 * np.abs(base).max()
    tau = torch.zeros(n // 2 + 1)
    tau[8:] = 1e6
    shelled = reconstruct(acc, wiener=tau).numpy()
    assert fsc(shelled, base, px).fsc[1:7].min() > 0.99
    power = lambda m: np.abs(np.fft.rfftn(m - lowpass(m, 9.5))).sum()  # noqa: E731
    assert power(shelled) < 0.15 * power(base)  # leakage: the real-space crop blurs shells
    masked = reconstruct(acc, mask_radius_angstrom=8.0, mask_edge_angstrom=4.0).numpy()
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    assert np.abs(masked[np.sqrt(x * x + y * y + z * z) > 6.5]).max() == 0.0
    with pytest.raises(InvalidInput):
        reconstruct(acc, wiener=torch.ones(3))


def test_dose_weighted_data_reconstruct_without_amplitude_bias():
    """Frames damped by their exposure envelope and weighted by it come back at full amplitude."""
    from mrepo.refine.dose import dose_weights

    n, px, count = 32, 2.0, 800
    truth = lowpass(random_map(n, sigma_px=0.8, seed=14), n / 2)
    fv = prepare_volume(truth, px)
    ang = random_euler(count, seed=15)
    exposure = np.where(np.arange(count) % 2 == 0, 4.0, 30.0)  # e⁻/Å²
    w = dose_weights(exposure, n, px)
    imgs = irfft2_centered(project(fv, torch.tensor(ang)) * w, n)  # the physical damping
    res = reconstruct_from_particles(imgs.numpy(), ang, px, dose_weights=w, device="cpu")
    f_rec = np.fft.rfftn(res.full_map)
    f_true = np.fft.rfftn(truth)
    k = np.sqrt(np.fft.fftfreq(n, 1 / n)[:, None, None] ** 2 + np.fft.fftfreq(n, 1 / n)[None, :, None] ** 2
                + np.arange(n // 2 + 1)[None, None, :] ** 2)
    for shell in (4, 8, 12):
        sel = np.round(k) == shell
        ratio = np.sum(np.abs(f_rec[sel])) / np.sum(np.abs(f_true[sel]))
        assert ratio == pytest.approx(1.0, abs=0.03), (shell, ratio)
