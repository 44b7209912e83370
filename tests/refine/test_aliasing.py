"""Aliasing-free CTF premultiplication and the band-limited CTF² (M, Extended Data Fig. 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrepo.errors import InvalidInput
from mrepo.refine.aliasing import (
    aliasing_free_box,
    ctf_squared_bandlimited,
    max_ctf_phase_gradient,
    premultiply_ctf,
)
from mrepo.refine.backprojection import Reconstructor
from mrepo.refine.ctf import CtfParams, ctf_2d, ctf_phase, electron_wavelength_angstrom
from mrepo.refine.fourier import crop_center, irfft2_centered, pad_center, rfft2_centered
from mrepo.refine.fsc import fsc, resolution_at
from mrepo.refine.projection import prepare_volume, project
from refine_helpers import lowpass, random_euler, random_map

HIGH_DEFOCUS = CtfParams(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07,
                         defocus_u_angstrom=50000.0, defocus_v_angstrom=50000.0)


def test_aliasing_free_box_formula():
    px, res = 1.0, 8.0
    k = 1.0 / res
    lam = electron_wavelength_angstrom(300.0)
    # |dγ/dk| = |−2πλΔf k + 2π Cs λ³ k³|, largest at the band edge for this defocus
    g = 2 * math.pi * lam * 50000.0 * k - 2 * math.pi * 2.7e7 * lam**3 * k**3
    assert float(max_ctf_phase_gradient(HIGH_DEFOCUS, res)) == pytest.approx(g, rel=1e-4)
    n_raw = aliasing_free_box(HIGH_DEFOCUS, px, res, fft_friendly=False)
    assert n_raw == pytest.approx(math.sqrt(2) * g / (math.pi * px), abs=2.0)
    n = aliasing_free_box(HIGH_DEFOCUS, px, res)
    assert n >= n_raw and n % 2 == 0
    # 100 Å of particle adds 100 px at 1 Å/px
    assert aliasing_free_box(HIGH_DEFOCUS, px, res, particle_diameter_angstrom=100.0, fft_friendly=False) == \
        pytest.approx(n_raw + 100, abs=2)
    # astigmatism: the larger defocus decides; batches: the worst element decides
    astig = CtfParams(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07,
                      defocus_u_angstrom=20000.0, defocus_v_angstrom=50000.0, defocus_angle_deg=30.0)
    assert aliasing_free_box(astig, px, res, fft_friendly=False) == n_raw
    batch = CtfParams(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07,
                      defocus_u_angstrom=torch.tensor([10000.0, 50000.0, 30000.0]),
                      defocus_v_angstrom=torch.tensor([10000.0, 50000.0, 30000.0]))
    assert aliasing_free_box(batch, px, res, fft_friendly=False) == n_raw
    with pytest.raises(InvalidInput):
        aliasing_free_box(HIGH_DEFOCUS, px, 1.5)  # beyond Nyquist


def _max_phase_step(params, box, px, res):
    """Largest change of γ between neighbouring Fourier pixels (axes and diagonals) inside |k| <= 1/res."""
    ky, kx = torch.meshgrid(torch.arange(-box // 2, box // 2, dtype=torch.float64) / (box * px),
                            torch.arange(-box // 2, box // 2, dtype=torch.float64) / (box * px), indexing="ij")
    g = ctf_phase(params, kx, ky)
    inside = (kx**2 + ky**2) <= (1 / res) ** 2
    steps = []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        d = (torch.roll(g, (-dy, -dx), (0, 1)) - g).abs()
        ok = inside & torch.roll(inside, (-dy, -dx), (0, 1))
        steps.append(d[ok].max())
    return float(max(steps)), float(max(steps[:2]))


def test_aliasing_free_box_samples_the_phase_finely_enough():
    px, res = 1.0, 8.0
    n = aliasing_free_box(HIGH_DEFOCUS, px, res, fft_friendly=False)
    worst, _ = _max_phase_step(HIGH_DEFOCUS, n, px, res)
    assert worst < math.pi
    # a box ~√2 smaller already aliases along the axes; the brief's 64 px box badly so
    small = int(0.9 * n / math.sqrt(2))
    assert _max_phase_step(HIGH_DEFOCUS, small, px, res)[1] > math.pi
    assert _max_phase_step(HIGH_DEFOCUS, 64, px, res)[1] > 3 * math.pi


def test_premultiply_and_bandlimited_weight_reduce_to_plain_ctf_at_one_size():
    n, px = 40, 1.3
    p = CtfParams(voltage_kv=200.0, cs_mm=1.4, amplitude_contrast=0.1,
                  defocus_u_angstrom=torch.tensor([9000.0, 15000.0]), defocus_v_angstrom=12000.0,
                  defocus_angle_deg=torch.tensor([20.0, -70.0]))
    img = torch.randn(2, n, n, dtype=torch.float64)
    c = ctf_2d(p, n, px, dtype=torch.float64)
    nyq = np.ones((n, n // 2 + 1))
    nyq[n // 2, :] = 0
    nyq[:, n // 2] = 0  # premultiply_ctf zeroes the (not Friedel-symmetric) Nyquist row and column
    want = np.fft.fftshift(np.fft.irfft2(np.fft.rfft2(np.fft.ifftshift(img.numpy(), axes=(-2, -1))) * c.numpy() * nyq,
                                         s=(n, n)), axes=(-2, -1))
    np.testing.assert_allclose(premultiply_ctf(img, p, px, n).numpy(), want, atol=1e-12)
    inner = torch.arange(n) != n // 2  # the Nyquist row/column of an astigmatic CTF is not Friedel-symmetric
    bl = ctf_squared_bandlimited(p, px, n, n, dtype=torch.float64)
    torch.testing.assert_close(bl[:, inner, : n // 2], (c * c)[:, inner, : n // 2])
    # padding to a working box, then cropping back, equals doing the same by hand in numpy
    big = 2 * n
    cb = ctf_2d(p, big, px, dtype=torch.float64).numpy()
    cb[:, big // 2, :] = 0
    cb[:, :, big // 2] = 0
    padded = np.pad(img.numpy(), ((0, 0), (n // 2, n // 2), (n // 2, n // 2)))
    by_hand = np.fft.fftshift(np.fft.irfft2(np.fft.rfft2(np.fft.ifftshift(padded, axes=(-2, -1))) * cb,
                                            s=(big, big)), axes=(-2, -1))[:, n // 2: n // 2 + n, n // 2: n // 2 + n]
    np.testing.assert_allclose(premultiply_ctf(img, p, px, n, work_box=big).numpy(), by_hand, atol=1e-12)


def test_bandlimited_ctf_squared_is_smooth_where_the_ctf_aliases():
    n, px = 64, 1.0
    small = ctf_2d(HIGH_DEFOCUS, n, px, damping=False) ** 2
    big_box = aliasing_free_box(HIGH_DEFOCUS, px)
    bl = ctf_squared_bandlimited(HIGH_DEFOCUS, px, n, big_box, damping=False)
    ky = torch.fft.fftfreq(n, 1 / n)[:, None]
    kx = torch.arange(n // 2 + 1)[None, :]
    outer = ((kx**2 + ky**2) > 16**2) & ((kx**2 + ky**2) < 30**2)
    # sin² averages to ½ once the oscillation is faster than the pixel
    assert float(bl[outer].mean()) == pytest.approx(0.5, abs=0.03)
    assert float(bl[outer].std()) < 0.05
    assert float(small[outer].std()) > 0.25
    # near DC the cropped PSF's tail can make the raw value negative: it is clamped at 0
    assert 0.0 <= float(bl[0, 0]) < 0.03


def _aliasing_experiment(count=600, seed=0):
    """Simulated data at 5 µm defocus in a 64 px box (2 Å/px), reconstructed two ways."""
    n, px, res = 64, 2.0, 8.0
    truth = lowpass(random_map(n, sigma_px=0.5, radius_frac=20 / 64, seed=seed), n * px / res)
    fv = prepare_volume(truth, px)
    rng = np.random.default_rng(seed + 1)
    ang = torch.tensor(random_euler(count, seed=seed + 2))
    df = torch.tensor(rng.uniform(48000, 52000, count))
    ctf = CtfParams(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07, defocus_u_angstrom=df,
                    defocus_v_angstrom=df - 300.0, defocus_angle_deg=torch.tensor(rng.uniform(0, 180, count)))
    work = aliasing_free_box(ctf, px, res)
    sim = 256  # the "micrograph": big enough to hold the delocalised signal, alias-free to 8 Å
    assert sim > work
    recs = {k: Reconstructor(n, px, n_halves=1) for k in ("plain", "M")}
    for s in range(0, count, 100):
        p, a = ctf[s:s + 100], ang[s:s + 100]
        proj = pad_center(irfft2_centered(project(fv, a), n), sim)
        mic = irfft2_centered(rfft2_centered(proj) * ctf_2d(p, sim, px), sim)
        # plain: extract the 64 px box, multiply by the (aliased) 64 px CTF, weight CTF²
        c = ctf_2d(p, n, px)
        recs["plain"].insert(rfft2_centered(premultiply_ctf(crop_center(mic, n), p, px, n)), c * c, a)
        # M: extract at the aliasing-free box, premultiply there, crop; band-limited CTF²
        x = rfft2_centered(premultiply_ctf(crop_center(mic, work), p, px, n))
        recs["M"].insert(x, ctf_squared_bandlimited(p, px, n, work), a)
    curves = {k: fsc(r.reconstruct(0).numpy(), truth, px) for k, r in recs.items()}
    return curves, int(n * px / res)


def test_aliasing_free_premultiplication_beats_plain_extraction():
    curves, edge = _aliasing_experiment()
    plain, m = curves["plain"].fsc, curves["M"].fsc
    for k, c in curves.items():
        print(f"{k:10s} FSC vs truth, shells 0..{edge}:", np.round(c.fsc[: edge + 1], 3))
    outer = slice(edge // 2, edge)  # 16 Å to 8 Å, where the 64 px CTF aliases
    assert m[outer].min() > 0.95
    assert plain[outer].mean() < 0.8
    assert resolution_at(curves["M"], 0.5) < resolution_at(curves["plain"], 0.5)
    # near DC, where CTF² is tiny at 5 µm, the cropped PSF matches the data less well
    assert m[1:edge // 2].min() > 0.85
