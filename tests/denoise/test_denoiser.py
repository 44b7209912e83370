"""The noise2noise denoiser as a function of two half-maps (mrepo.refine.denoise).

Quality and independence are shown on simulated maps (mrepo.refine.phantom):
a rigid core and a flexible domain, two half-maps = truth with the domain
blurred differently per particle subset + independent noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrepo.errors import CorruptObject, InvalidInput
from mrepo.refine.denoise import (
    DenoiserConfig,
    apply_denoiser,
    band_split,
    build_model,
    cube_symmetry,
    denoise_half_maps,
    initial_denoiser,
    load_model,
    set_initial_gains,
    spectral_whitening,
    train_denoiser,
    TrainSettings,
)
from mrepo.refine.fourier import soft_sphere_mask
from mrepo.refine.fsc import fsc
from mrepo.refine.phantom import pseudo_atomic_phantom

# tiny settings: a small network on 32³ crops
TINY = DenoiserConfig(channels=8, bands=8)


def _lowpass(v: np.ndarray, res_angstrom: float, px: float, edge_px: float = 2.0) -> np.ndarray:
    """``v`` filtered to ``res_angstrom`` with a raised-cosine edge ``edge_px`` Fourier px wide."""
    n = v.shape[0]
    k = np.fft.fftfreq(n) * n
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.arange(n // 2 + 1)[None, None, :] ** 2)
    rc = n * px / res_angstrom
    w = np.clip((rc + edge_px / 2 - r) / edge_px, 0.0, 1.0)
    return np.fft.irfftn(np.fft.rfftn(v) * (0.5 - 0.5 * np.cos(np.pi * w)), s=v.shape, axes=(0, 1, 2))


def _corr(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
    return float(np.corrcoef(a[m], b[m])[0, 1])


@pytest.fixture(scope="module")
def two_domain():
    """A 48³ two-domain phantom (1.6 Å/px), its particle mask, and a denoiser trained on it."""
    p = pseudo_atomic_phantom(48, 1.6, core_radii_angstrom=(14, 12, 12), domain_radii_angstrom=(11, 10, 10),
                              atom_density=1 / 40, atom_sigma_angstrom=1.2, flex_shift_angstrom=2.5,
                              flex_rotation_deg=5.0, noise_std=1.0, seed=1)
    mask = soft_sphere_mask(48, 0.5 * 60 / 1.6, 3.0).numpy()
    out = denoise_half_maps(p.half1, p.half2, config=TINY, iterations=120, crop=24, batch=2, seed=0, device="cpu", mask=mask)
    return p, mask, out


def test_denoised_half_beats_global_fsc_filter_in_core_and_flexible_domain(two_domain):
    p, mask, out = two_domain
    res = fsc(p.half1, p.half2, p.pixel_size_angstrom, mask=mask).resolution()
    lp = _lowpass(p.half1, res, p.pixel_size_angstrom)
    # "true map" of the data: the noise-free map that infinitely many particles would give
    # (the core exactly; the domain averaged over its motion)
    for region in (p.core_mask, p.domain_mask):
        assert _corr(out.half1, p.expected, region) > _corr(lp, p.expected, region) + 0.02
        assert _corr(out.half2, p.expected, region) > _corr(_lowpass(p.half2, res, p.pixel_size_angstrom), p.expected, region) + 0.02
    # in the rigid core that is the atomic model itself
    assert _corr(out.half1, p.truth, p.core_mask) > _corr(lp, p.truth, p.core_mask) + 0.02
    # the network learnt something: it beats the global linear filter it starts from
    start = denoise_half_maps(p.half1, p.half2, config=TINY, iterations=0, device="cpu", mask=mask)
    assert _corr(out.half1, p.expected, p.core_mask) > _corr(start.half1, p.expected, p.core_mask) + 0.02


def test_denoised_halves_share_no_more_than_the_signal(two_domain):
    """FSC(d1, d2) = FSC(d1, E) FSC(d2, E) for halves that share only the true signal E
    (up to a per-shell scale); the excess is what they share beyond it. A local filter adds a
    little (the same gains shape both halves' signal); it stays small wherever there is signal."""
    p, mask, out = two_domain
    px = p.pixel_size_angstrom
    f12 = fsc(out.half1, out.half2, px, mask=mask).fsc
    f1 = fsc(out.half1, p.expected, px, mask=mask).fsc
    f2 = fsc(out.half2, p.expected, px, mask=mask).fsc
    raw = fsc(p.half1, p.half2, px, mask=mask)
    upto = int(np.searchsorted(-raw.fsc, -0.143))  # shells with signal in the raw halves
    excess = (f12 - f1 * f2)[1:upto]
    assert excess.max() < 0.12, np.round(excess, 3)


def test_pure_noise_halves_give_uncorrelated_outputs():
    rng = np.random.default_rng(3)
    n = 32
    h1 = rng.normal(size=(n, n, n)).astype(np.float32)
    h2 = rng.normal(size=(n, n, n)).astype(np.float32)
    out = denoise_half_maps(h1, h2, config=TINY, iterations=40, crop=24, batch=2, seed=1, device="cpu")
    # it suppresses the noise...
    assert out.half1.std() < 0.5 * h1.std()
    # ...and the two outputs share nothing: |FSC| within 3 sigma of zero in every shell
    curve = fsc(out.half1, out.half2, 1.0).fsc
    k = np.fft.fftfreq(n) * n
    r = np.round(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)).astype(int)
    voxels = np.bincount(r.ravel())[: n // 2 + 1] / 2  # independent Fourier voxels per shell (Friedel pairs)
    sigma3 = 3 / np.sqrt(voxels)
    assert np.all(np.abs(curve[1:]) < sigma3[1:]), np.round(curve, 3)


def test_halves_of_unrelated_structures_stay_unrelated(two_domain):
    """Half 1 of one structure and half 2 of another (same shape, different atoms): the true
    signals agree only at low resolution, and so must the denoised halves."""
    p, _, _ = two_domain
    q = pseudo_atomic_phantom(48, 1.6, core_radii_angstrom=(14, 12, 12), domain_radii_angstrom=(11, 10, 10),
                              atom_density=1 / 40, atom_sigma_angstrom=1.2, flex_shift_angstrom=2.5,
                              flex_rotation_deg=5.0, noise_std=1.0, seed=2)
    out = denoise_half_maps(p.half1, q.half2, config=TINY, iterations=120, crop=24, batch=2, seed=0, device="cpu")
    n = 48
    f = fsc(out.half1, out.half2, 1.6).fsc
    k = np.fft.fftfreq(n) * n
    r = np.round(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)).astype(int)
    sigma = 1 / np.sqrt(np.bincount(r.ravel())[: n // 2 + 1] / 2)
    high = slice(8, n // 2 + 1)  # beyond ~10 Å, where the two structures' true FSC is ~0
    assert abs(fsc(p.expected, q.expected, 1.6).fsc[high].mean()) < 0.02
    assert np.all(np.abs(f[high]) < 3 * sigma[high]), np.round(f[high], 3)
    assert abs(f[high].mean()) < 0.02, np.round(f[high], 3)


def test_training_is_reproducible_by_seed_on_cpu():
    p = pseudo_atomic_phantom(24, 2.0, core_radii_angstrom=(9, 8, 8), domain_radii_angstrom=(5, 5, 5), seed=2)
    kw = dict(config=TINY, iterations=3, crop=16, batch=2, device="cpu", average=False)
    a = denoise_half_maps(p.half1, p.half2, seed=7, **kw)
    b = denoise_half_maps(p.half1, p.half2, seed=7, **kw)
    c = denoise_half_maps(p.half1, p.half2, seed=8, **kw)
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert np.array_equal(a.half1, b.half1) and a.losses == b.losses
    assert any(not np.array_equal(a.weights[k], c.weights[k]) for k in a.weights)
    # resuming from weights continues from them (the loss starts where the first session ended)
    d = denoise_half_maps(p.half1, p.half2, weights=a.weights, seed=9, **kw)
    assert set(d.weights) == set(a.weights) and any(not np.array_equal(a.weights[k], d.weights[k]) for k in a.weights)


def test_a_64_cube_training_step_runs_on_cpu():
    """The full setting (64³ crops) trains on the CPU; its speed is in benchmarks/bench_denoise.py."""
    p = pseudo_atomic_phantom(64, 1.2, seed=4)
    t1, t2 = torch.from_numpy(p.half1), torch.from_numpy(p.half2)
    wh = spectral_whitening(t1, t2)
    model = build_model(DenoiserConfig(), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = train_denoiser(model, wh.whiten(t1), wh.whiten(t2), TrainSettings(iterations=1, crop=64, batch=1))
    assert len(losses) == 1 and np.isfinite(losses[0])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cube_symmetries_are_the_48_distinct_elements():
    x = torch.arange(2 * 3 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3, 3)
    images = {tuple(cube_symmetry(x, i).flatten().tolist()) for i in range(48)}
    assert len(images) == 48
    assert torch.equal(cube_symmetry(x, 0), x)
    # leading (channel) axes are carried along unchanged
    assert torch.equal(cube_symmetry(x, 13)[1], cube_symmetry(x[1], 13))
    with pytest.raises(InvalidInput):
        cube_symmetry(x, 48)


def test_bands_add_up_and_whitening_inverts():
    rng = np.random.default_rng(0)
    v = torch.from_numpy(rng.normal(size=(24, 24, 24)).astype(np.float32))
    b = band_split(v - v.mean(), 6)
    assert b.shape == (6, 24, 24, 24)
    assert torch.allclose(b.sum(0), v - v.mean(), atol=1e-4)
    h2 = v + torch.from_numpy(rng.normal(size=(24, 24, 24)).astype(np.float32))
    wh = spectral_whitening(v, h2)
    w = wh.whiten(v)
    rms = float(torch.sqrt((w.std() ** 2 + wh.whiten(h2).std() ** 2) / 2))
    assert abs(rms - 1.0) < 0.01
    # the mean is the pair's (each map's own DC is not kept apart)
    assert torch.allclose(wh.unwhiten(w), v - v.mean() + wh.mean, atol=1e-4)


def test_windowed_denoising_blends_to_the_whole_map_result():
    """With gains constant in space the output is a global filter, whatever the windows;
    with a trained network, small windows agree with one window away from the edges."""
    rng = np.random.default_rng(1)
    v = torch.from_numpy(rng.normal(size=(40, 40, 40)).astype(np.float32))
    bands = band_split(v, TINY.bands)
    model = build_model(TINY, seed=0)
    g = np.linspace(0.9, 0.1, TINY.bands)
    set_initial_gains(model, g)
    expect = (torch.from_numpy(np.clip(g, 1e-3, 1 - 1e-3).astype(np.float32))[:, None, None, None] * bands).sum(0)
    for window, overlap in ((16, 8), (24, 4), (64, 16)):
        got = apply_denoiser(model, bands, window=window, overlap=overlap, batch=3)
        assert torch.allclose(got, expect, atol=1e-5), (window, overlap)
    p = pseudo_atomic_phantom(40, 1.6, core_radii_angstrom=(10, 9, 9), domain_radii_angstrom=(6, 6, 6), seed=5)
    out = denoise_half_maps(p.half1, p.half2, config=TINY, iterations=5, crop=16, device="cpu", average=False)
    model = load_model(out.weights, TINY)
    w = spectral_whitening(torch.from_numpy(p.half1), torch.from_numpy(p.half2))
    b1 = band_split(w.whiten(torch.from_numpy(p.half1)), TINY.bands)
    one = apply_denoiser(model, b1, window=64, overlap=16)
    small = apply_denoiser(model, b1, window=24, overlap=12)
    inner = (slice(8, -8),) * 3
    err = float((one - small)[inner].std() / one[inner].std())
    assert err < 0.05, err


def test_initial_denoiser_and_bad_weights():
    w = initial_denoiser(config=TINY, seed=0)
    assert np.array_equal(w["out.weight"], np.zeros_like(w["out.weight"]))
    assert initial_denoiser(config=TINY, seed=0)["enc.0.0.weight"].tobytes() == w["enc.0.0.weight"].tobytes()
    model = load_model(w, TINY)
    assert sum(p.numel() for p in model.parameters()) == sum(a.size for a in w.values())
    bad = dict(w)
    bad["out.bias"] = np.zeros(3, np.float32)
    with pytest.raises(CorruptObject):
        load_model(bad, TINY)
    bad = dict(w)
    del bad["out.bias"]
    with pytest.raises(CorruptObject):
        load_model(bad, TINY)
    with pytest.raises(InvalidInput):
        denoise_half_maps(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), iterations=0)
    with pytest.raises(InvalidInput):
        denoise_half_maps(np.full((8, 8, 8), np.nan), np.zeros((8, 8, 8)), iterations=0)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    p = pseudo_atomic_phantom(32, 1.6, core_radii_angstrom=(9, 8, 8), domain_radii_angstrom=(5, 5, 5), seed=2)
    trained = denoise_half_maps(p.half1, p.half2, config=TINY, iterations=5, crop=16, device="cpu", average=False)
    cpu = denoise_half_maps(p.half1, p.half2, trained.weights, config=TINY, iterations=0, device="cpu")
    gpu = denoise_half_maps(p.half1, p.half2, trained.weights, config=TINY, iterations=0, device="cuda")
    scale = float(np.abs(cpu.half1).max())
    assert np.abs(cpu.half1 - gpu.half1).max() < 1e-3 * scale
    gtrain = denoise_half_maps(p.half1, p.half2, config=TINY, iterations=20, crop=16, device="cuda", average=False)
    assert np.isfinite(gtrain.losses).all() and gtrain.metrics["device"].startswith("cuda")
