"""Euler convention, central-slice projection, and its gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from mrepo.errors import InvalidInput
from mrepo.refine.euler import euler_to_matrix, matrix_to_euler
from mrepo.refine.fourier import fourier_crop_rfft2, irfft2_centered, rfft2_centered
from mrepo.refine.projection import prepare_volume, project, real_space_projection
from refine_helpers import random_euler, random_map


def _rz(a):  # frame rotation, as RELION's Euler_angles2matrix builds it
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])


def _ry(b):
    c, s = np.cos(b), np.sin(b)
    return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])


def test_euler_matrix_is_relion_zyz():
    ang = random_euler(50, seed=3)
    a = euler_to_matrix(torch.tensor(ang)).numpy()
    for (rot, tilt, psi), m in zip(np.radians(ang), a):
        np.testing.assert_allclose(m, _rz(psi) @ _ry(tilt) @ _rz(rot), atol=1e-12)
    # A is the transpose of the active intrinsic ZYZ rotation (scipy's 'ZYZ').
    np.testing.assert_allclose(a, np.transpose(Rotation.from_euler("ZYZ", ang, degrees=True).as_matrix(), (0, 2, 1)),
                               atol=1e-12)
    np.testing.assert_allclose(a @ np.transpose(a, (0, 2, 1)), np.broadcast_to(np.eye(3), a.shape), atol=1e-12)


def test_matrix_to_euler_round_trip():
    ang = np.concatenate([random_euler(200, seed=4), [[0, 0, 30.0], [0, 180, -40.0], [25, 0, 0]]])
    a = euler_to_matrix(torch.tensor(ang))
    back = matrix_to_euler(a)
    torch.testing.assert_close(euler_to_matrix(back), a, atol=1e-10, rtol=0)
    assert float(back[:, 1].min()) >= 0 and float(back[:, 1].max()) <= 180
    # degenerate tilts: rot is 0 and psi carries the rotation (RELION's choice)
    np.testing.assert_allclose(back[-3:].numpy(), [[0, 0, 30], [0, 180, -40], [0, 0, 25]], atol=1e-9)
    with pytest.raises(InvalidInput):
        euler_to_matrix(torch.zeros(4, 2))


def _blob(n, centre_xyz, sigma=1.5):
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    cx, cy, cz = centre_xyz
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))


def _peak_xy(img):
    n = img.shape[-1]
    iy, ix = np.unravel_index(np.argmax(img), img.shape)
    return ix - n // 2, iy - n // 2


@pytest.mark.parametrize(
    "blob,angles,origin_a,expected",
    [
        ((0, 0, 8), (0, 90, 0), (0, 0), (-8, 0)),  # tilt 90: +z of the map goes to -x of the image
        ((8, 0, 0), (90, 0, 0), (0, 0), (0, -8)),  # rot 90: +x of the map goes to -y of the image
        ((8, 0, 0), (0, 0, 90), (0, 0), (0, -8)),  # psi 90 acts in the image plane the same way
        ((0, 0, 0), (10, 20, 30), (3.0, -2.0), (-3, 2)),  # origin (ox, oy) Å puts the particle at -(ox, oy)
    ],
)
def test_projection_conventions_with_a_point(blob, angles, origin_a, expected):
    n, px = 32, 1.0
    vol = _blob(n, blob)
    fv = prepare_volume(vol, px, dtype=torch.float64)
    img = irfft2_centered(project(fv, torch.tensor([angles], dtype=torch.float64),
                                  torch.tensor([origin_a], dtype=torch.float64)), n)[0].numpy()
    assert _peak_xy(img) == expected
    ref = real_space_projection(vol, angles, np.array([origin_a]) / px)[0]
    assert _peak_xy(ref) == expected


def test_fourier_projection_agrees_with_real_space_line_integrals():
    n, px = 48, 1.5
    vol = random_map(n, sigma_px=1.0, seed=1)
    ang = random_euler(6, seed=5)
    shifts_px = np.random.default_rng(2).uniform(-2, 2, (6, 2))
    fv = prepare_volume(vol, px, dtype=torch.float64)
    four = project(fv, torch.tensor(ang), torch.tensor(shifts_px * px))
    real = rfft2_centered(torch.tensor(real_space_projection(vol, ang, shifts_px, order=3)))
    # low resolution: |k| < n/4, half of the Nyquist radius
    ky = torch.fft.fftfreq(n, 1 / n)[:, None]
    kx = torch.arange(n // 2 + 1)[None, :]
    low = (kx**2 + ky**2) < (n / 4) ** 2
    corrs = []
    for i in range(len(ang)):
        a = irfft2_centered(four[i] * low, n).numpy().ravel()
        b = irfft2_centered(real[i] * low, n).numpy().ravel()
        corrs.append(np.corrcoef(a, b)[0, 1])
        # same scale: line integrals in voxel units
        assert np.linalg.norm(a) == pytest.approx(np.linalg.norm(b), rel=0.02)
    assert min(corrs) > 0.999, corrs
    # at full resolution they still agree closely (cubic real-space interpolation smooths a little)
    full = [np.corrcoef(irfft2_centered(four[i], n).numpy().ravel(),
                        irfft2_centered(real[i], n).numpy().ravel())[0, 1] for i in range(len(ang))]
    assert min(full) > 0.995, full


def test_crop_box_and_out_box():
    n = 32
    vol = random_map(n, seed=2)
    fv = prepare_volume(vol, 1.0, dtype=torch.float64)
    ang = torch.tensor(random_euler(3, seed=6))
    p = project(fv, ang)
    torch.testing.assert_close(project(fv, ang, crop_box=12), fourier_crop_rfft2(p, 12) * _disk(12))
    # a twice-larger output box samples Fourier space twice as finely: same image, zero-padded
    big = irfft2_centered(project(fv, ang, out_box=2 * n), 2 * n).numpy()
    small = irfft2_centered(p, n).numpy()
    inner = big[:, n // 2: n // 2 + n, n // 2: n // 2 + n]
    for i in range(3):
        assert np.corrcoef(inner[i].ravel(), small[i].ravel())[0, 1] > 0.995
    assert np.abs(big).max() > 0 and np.abs(big[:, :4, :]).max() < 0.05 * np.abs(big).max()


def _disk(c):
    ky = torch.fft.fftfreq(c, 1 / c)[:, None]
    kx = torch.arange(c // 2 + 1)[None, :]
    return ((kx**2 + ky**2) < (c / 2) ** 2).to(torch.float64)


def test_gradients_wrt_angles_and_shifts_match_finite_differences():
    n, px = 32, 1.2
    vol = random_map(n, sigma_px=1.0, seed=7)
    fv = prepare_volume(vol, px, dtype=torch.float64)
    ang0 = torch.tensor(random_euler(4, seed=8))
    sh0 = torch.tensor(np.random.default_rng(9).uniform(-3, 3, (4, 2)))
    target = project(fv, ang0 + torch.tensor([2.0, -1.5, 3.0]), sh0 + 0.7).detach()

    def loss(a, s):
        d = project(fv, a, s) - target
        return (d.real**2 + d.imag**2).sum()

    a = ang0.clone().requires_grad_(True)
    s = sh0.clone().requires_grad_(True)
    loss(a, s).backward()
    ga, gs = a.grad.numpy(), s.grad.numpy()
    fa, fs = np.zeros_like(ga), np.zeros_like(gs)
    h_a, h_s = 1e-5, 1e-6
    for i in range(4):
        for j in range(3):
            e = torch.zeros_like(ang0)
            e[i, j] = h_a
            fa[i, j] = (loss(ang0 + e, sh0) - loss(ang0 - e, sh0)).item() / (2 * h_a)
        for j in range(2):
            e = torch.zeros_like(sh0)
            e[i, j] = h_s
            fs[i, j] = (loss(ang0, sh0 + e) - loss(ang0, sh0 - e)).item() / (2 * h_s)
    np.testing.assert_allclose(gs, fs, rtol=1e-5, atol=1e-6 * np.abs(fs).max())
    # trilinear interpolation is piecewise linear in the angles: exact away from cell faces
    np.testing.assert_allclose(ga, fa, rtol=1e-5, atol=1e-6 * np.abs(fa).max())


def test_gradient_wrt_map():
    n = 16
    vol = torch.tensor(random_map(n, seed=10), requires_grad=True)
    ang = torch.tensor(random_euler(2, seed=11))
    w = torch.randn(2, n, n // 2 + 1, dtype=torch.complex128)

    def f(v):
        return (project(prepare_volume(v, 1.0, dtype=torch.float64), ang) * w).real.sum()

    f(vol).backward()
    idx = (8, 7, 9)
    e = torch.zeros_like(vol)
    e[idx] = 1e-4
    fd = (f(vol.detach() + e) - f(vol.detach() - e)).item() / 2e-4
    assert vol.grad[idx].item() == pytest.approx(fd, rel=1e-6)
