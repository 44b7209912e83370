"""Ground truth of the imaging model in simulated frame series: anisotropic magnification,
doming and intra-frame motion blur (forward-model conventions), their persistence in the truth
folder, and the metrics that measure a population's imaging model against them."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest

from mrepo.errors import InvalidInput
from mrepo.model import CubicGrid, ImagingModel, Item, Particles
from mrepo.sim import (
    astigmatism_error,
    beam_tilt_error_mrad,
    defocus_rmse,
    doming_rmse,
    load_truth,
    magnification_error,
    preset,
    render_frames,
    simulate,
)
from mrepo.sim.geometry import matrices, normalised_xy
from mrepo.sim.render import blur_damping, doming_offsets, frame_records, render_box
from mrepo.sim.simulate import doming_grid, mag_matrix
from mrepo.sim.truth import truth_population

PX, BOX = 3.0, 40
#: an asymmetric object: Gaussian blobs (σ in voxels) at offsets (x, y, z) voxels from the centre voxel
BLOBS = np.array([[0.0, 0.0, 0.0], [6.0, -2.0, 3.0], [-4.0, 5.0, -5.0]])
ANGLES = np.array([[[30.0, 60.0, -20.0]]])


def _blob_map(g: np.ndarray | None = None, sigma: float = 2.0) -> np.ndarray:
    """The blobs, or the map V'(r) = V(G⁻¹ r) / det G (whose transform is V̂(G q))."""
    z, y, x = np.mgrid[:BOX, :BOX, :BOX] - BOX // 2
    r = np.stack([x, y, z], -1).astype(np.float64)
    det = 1.0
    if g is not None:
        r = r @ np.linalg.inv(g).T
        det = float(np.linalg.det(g))
    v = sum(np.exp(-((r - c) ** 2).sum(-1) / (2 * sigma**2)) for c in BLOBS)
    return (v / det).astype(np.float32)


def _item(shape=(1, 128, 128), **imaging) -> Item:
    im = ImagingModel(pixel_size_angstrom=PX, **imaging)
    f = shape[0]
    return Item("m", "frames", "d", shape, im, np.arange(f, dtype=np.float64), np.ones(f))


def _particle(xy_px=(64.3, 63.6), z=0.0):
    coords = np.array([[[xy_px[0] * PX, xy_px[1] * PX, z]]])
    return {"s": Particles.from_arrays(["d"], coords, ANGLES)}


def test_magnification_matrix_convention():
    """An image frequency k is the specimen frequency M k (RELION's rlnMagMat): the projection is
    the slice at Aᵀ (M k, 0) and the CTF is evaluated at M k. With Cs = 0 the CTF at M k of a
    defocus D is the CTF at k of an astigmatic defocus D (1 ± a)² along the axes of M, so the
    particle must equal the one rendered without magnification from the map whose transform is
    V̂(Aᵀ E A q) (E = [[M, 0], [0, 1]]) with that astigmatism. Positions are not distorted."""
    a, theta, d = 0.05, 30.0, 9000.0
    m = np.asarray(mag_matrix(a, theta))
    np.testing.assert_allclose(np.linalg.eigvalsh(m), [1 - a, 1 + a], atol=1e-12)
    e = np.eye(3)
    e[:2, :2] = m
    amat = matrices(ANGLES[0, 0])
    g = amat.T @ e @ amat
    distorted = render_frames({"s": _blob_map()}, _item(cs_mm=0.0, defocus_angstrom=d, mag_matrix=tuple(map(tuple, m))),
                              _particle(), None)[0]
    ref_item = _item(cs_mm=0.0, defocus_angstrom=d * (1 + a * a), astigmatism_angstrom=2 * a * d,
                     astigmatism_angle_deg=theta)
    reference = render_frames({"s": _blob_map(g)}, ref_item, _particle(), None)[0]
    err = np.linalg.norm(distorted - reference) / np.linalg.norm(reference)
    # the wrong conventions: M⁻¹ (specimen frequency to image frequency), and no magnification
    inverse = render_frames({"s": _blob_map()}, _item(cs_mm=0.0, defocus_angstrom=d,
                                                       mag_matrix=tuple(map(tuple, np.linalg.inv(m)))), _particle(), None)[0]
    err_inv = np.linalg.norm(inverse - reference) / np.linalg.norm(reference)
    plain = render_frames({"s": _blob_map()}, _item(cs_mm=0.0, defocus_angstrom=d), _particle(), None)[0]
    err_plain = np.linalg.norm(plain - reference) / np.linalg.norm(reference)
    print(f"relative error: M {err:.4f}, M⁻¹ {err_inv:.3f}, identity {err_plain:.3f}")
    assert err < 0.02
    assert err_inv > 20 * err and err_plain > 10 * err
    # identity matrix: exactly the renderer without magnification
    same = render_frames({"s": _blob_map()}, _item(cs_mm=0.0, defocus_angstrom=d, mag_matrix=((1.0, 0.0), (0.0, 1.0))),
                         _particle(), None)[0]
    np.testing.assert_array_equal(same, plain)


def _wedge_power(img: np.ndarray, angle_deg: float, kmin: float, kmax: float, half_width_deg: float = 10.0):
    f = np.fft.rfft2(img.astype(np.float64))
    ky = np.fft.fftfreq(img.shape[0], PX)[:, None]
    kx = np.fft.rfftfreq(img.shape[1], PX)[None, :]
    k = np.hypot(kx, ky)
    ang = np.degrees(np.arctan2(ky, kx))
    d = (ang - angle_deg + 90.0) % 180.0 - 90.0  # a line, not a ray: ±k are one direction
    sel = (np.abs(d) < half_width_deg) & (k > kmin) & (k < kmax)
    return (np.abs(f[np.broadcast_to(sel, f.shape)]) ** 2).sum()


def test_blur_damps_the_first_frames_along_its_direction():
    """exp(−2π² σ_f² (k·u)²): frames f < blur_frames lose power along u = (cos φ, sin φ), not
    across it; σ_f falls linearly to 0 at blur_frames; later frames are untouched."""
    phi, f = 35.0, 4
    cfg = preset("tiny", blur_frames=3, blur_angstrom=4.0, n_frames=f)
    sig = cfg.blur_sigma_angstrom()
    np.testing.assert_allclose(sig, [4.0, 8.0 / 3, 4.0 / 3, 0.0])
    blur = {"angle_deg": phi, "sigma_angstrom": list(sig)}
    item = _item((f, 128, 128), defocus_angstrom=6000.0)
    parts = _particle()
    vol = _blob_map(sigma=1.0)
    plain = render_frames({"s": vol}, item, parts, None)
    blurred = render_frames({"s": vol}, item, parts, None, blur=blur)
    # the item may carry the blur itself (the simulator's true items do)
    carried = dataclasses.replace(item, extra={"blur": blur})
    np.testing.assert_array_equal(render_frames({"s": vol}, carried, parts, None), blurred)
    np.testing.assert_array_equal(render_frames({"s": vol}, carried, parts, None, blur=False), plain)
    np.testing.assert_array_equal(blurred[3], plain[3])
    band = (0.04, 0.12)
    along, across = [], []
    for fr in range(3):
        along.append(_wedge_power(blurred[fr], phi, *band) / _wedge_power(plain[fr], phi, *band))
        across.append(_wedge_power(blurred[fr], phi + 90, *band) / _wedge_power(plain[fr], phi + 90, *band))
        # the expected ratio: the damping² averaged over the wedge with the unblurred power as weight
        ky = np.fft.fftfreq(128, PX)[:, None]
        kx = np.fft.rfftfreq(128, PX)[None, :]
        ku = kx * math.cos(math.radians(phi)) + ky * math.sin(math.radians(phi))
        d2 = np.exp(-4 * math.pi**2 * sig[fr] ** 2 * ku**2)
        p = np.abs(np.fft.rfft2(plain[fr].astype(np.float64))) ** 2
        k = np.hypot(kx, ky)
        ang = (np.degrees(np.arctan2(ky, kx)) - phi + 90.0) % 180.0 - 90.0
        sel = (np.abs(ang) < 10.0) & (k > band[0]) & (k < band[1])
        expect = (p * d2)[sel].sum() / p[sel].sum()
        assert along[-1] == pytest.approx(expect, rel=0.1, abs=0.01)
    print("power ratio blurred/plain along u:", np.round(along, 3), "across u:", np.round(across, 3))
    assert along[0] < 0.3 and along[0] < along[1] < along[2] < 1.0
    assert min(across) > 0.8 and all(c > a for a, c in zip(along, across))
    # the damping itself: 1 across u, exp(−2π²σ²k²) along u
    dmp = blur_damping(blur, [0], 64, PX).numpy()[0]
    ky = np.fft.fftfreq(64, PX)[:, None]
    kx = np.fft.rfftfreq(64, PX)[None, :]
    ku = kx * math.cos(math.radians(phi)) + ky * math.sin(math.radians(phi))
    np.testing.assert_allclose(dmp, np.exp(-2 * math.pi**2 * 16.0 * ku**2), rtol=1e-5, atol=1e-7)
    assert blur_damping(blur, [3], 64, PX) is None and blur_damping(None, [0], 64, PX) is None


def test_doming_is_a_defocus_change_over_position_and_exposure():
    """GridCTFDoming (µm) at the particle's first control point and t_f = f/(F−1) adds to the
    defocus like z does: frame f renders as the item without doming and the particle at z + Δ_f
    (positive = more underfocus)."""
    f = 3
    rng = np.random.default_rng(3)
    dome = doming_grid(rng, 400.0)
    assert dome.unit == "um" and dome.dims == (3, 3, 3)
    assert np.all(dome.values[0] == 0) and np.allclose(dome.values[1], 0.5 * dome.values[2], atol=1e-9)
    g = np.linspace(0, 1, 17)
    ye, xe = (a.reshape(-1) for a in np.meshgrid(g, g, indexing="ij"))
    last = dome.evaluate(xe, ye, np.ones_like(xe)) * 1e4
    assert np.sqrt((last**2).mean()) == pytest.approx(400.0, rel=1e-4) and abs(last.mean()) < 1e-3
    item = _item((f, 128, 128), defocus_angstrom=9000.0)
    domed = dataclasses.replace(item, grids={"GridCTFDoming": dome})
    xy = (20.4, 100.2)
    parts = _particle(xy, z=50.0)
    coords = np.asarray(parts["s"].coordinates, np.float64)
    x, y = normalised_xy(coords[:, 0, :2], item.shape, PX)
    delta = dome.evaluate(np.repeat(x, f), np.repeat(y, f), np.linspace(0, 1, f)) * 1e4
    assert delta[0] == 0 and delta[2] > 200
    # the render box (aliasing-free for the worst defocus of the series) is the same for all of them
    assert len({render_box(item, np.array([50.0 + d]), BOX) for d in delta}) == 1
    np.testing.assert_allclose(doming_offsets(domed, coords), delta[None], atol=1e-9)
    np.testing.assert_allclose(frame_records(domed, parts["s"]).defocus_offset_angstrom, 50.0 + delta, atol=1e-9)
    np.testing.assert_array_equal(doming_offsets(item, coords), np.zeros((1, f)))
    vol = _blob_map()
    r = render_frames({"s": vol}, domed, parts, None)
    for fr in range(f):
        ref = render_frames({"s": vol}, item, _particle(xy, z=50.0 + delta[fr]), None)
        np.testing.assert_allclose(r[fr], ref[fr], atol=1e-4)
    # and the sign: the frame differs from the undomed one where the doming is not 0
    assert np.abs(r[2] - render_frames({"s": vol}, item, parts, None)[2]).max() > 1e-3


IMAGING = dict(snr=None, n_movies=2, particles_per_movie=6, n_frames=4, n_tilt_series=1, tilt_step_deg=30.0,
               particles_per_tilt_series=3, reconstruct_half_maps=False)


@pytest.fixture(scope="module")
def imaging_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("imaging") / "sim"
    return simulate(out, config=preset("tiny", **IMAGING), seed=2, progress=False)


def test_true_items_carry_the_imaging_truth_and_round_trip(imaging_sim, tmp_path):
    res = imaging_sim
    cfg, truth = res.config, res.truth
    pop = res.repo.population()
    assert (cfg.mag_anisotropy, cfg.doming_angstrom, cfg.blur_frames, cfg.blur_angstrom) == (0.01, 150.0, 3, 4.0)
    for name, it in truth.items.items():
        stored = next(i for _s, i in pop.items() if i.name == name)
        assert stored.imaging.mag_matrix == ((1.0, 0.0), (0.0, 1.0)) and "GridCTFDoming" not in stored.grids
        if it.item.kind == "tilts":
            assert it.item.imaging.mag_matrix == ((1.0, 0.0), (0.0, 1.0)) and not it.item.grids and it.blur is None
            continue
        m = np.asarray(it.item.imaging.mag_matrix)
        np.testing.assert_allclose(m, m.T, atol=1e-15)
        np.testing.assert_allclose(np.linalg.eigvalsh(m), [0.99, 1.01], atol=1e-12)
        dome = it.doming
        assert set(it.item.grids) == {"GridCTFDoming"} and dome.unit == "um" and dome.dims == (3, 3, 3)
        g = np.linspace(0, 1, 17)
        ye, xe = (a.reshape(-1) for a in np.meshgrid(g, g, indexing="ij"))
        rms = np.sqrt(((dome.evaluate(xe, ye, np.ones_like(xe)) * 1e4) ** 2).mean())
        assert rms == pytest.approx(cfg.doming_angstrom, rel=1e-3)
        assert 0 <= it.blur["angle_deg"] < 180 and it.item.extra["blur"] == it.blur
        np.testing.assert_allclose(it.blur["sigma_angstrom"], cfg.blur_sigma_angstrom())
    t = load_truth(res.path)
    assert t.config == cfg
    for name, it in truth.items.items():
        lt = t.items[name]
        assert lt.item.imaging == it.item.imaging and lt.blur == it.blur
        assert lt.item.grids == it.item.grids and lt.item.extra.get("blur") == it.blur
    # a truth folder written before these effects existed: no grids, no blur entries, no config fields
    old = tmp_path / "old"
    shutil.copytree(res.path / "truth", old)
    doc = json.loads((old / "truth.json").read_text())
    for k in ("mag_anisotropy", "doming_angstrom", "blur_frames", "blur_angstrom"):
        del doc["config"][k]
    for it in doc["items"].values():
        del it["grids"], it["blur"]
        it["imaging"]["mag_matrix"] = [[1.0, 0.0], [0.0, 1.0]]
    (old / "truth.json").write_text(json.dumps(doc))
    o = load_truth(old)
    assert (o.config.mag_anisotropy, o.config.doming_angstrom, o.config.blur_frames, o.config.blur_angstrom) == (0, 0, 0, 0)
    assert all(not it.item.grids and it.blur is None and it.doming is None for it in o.items.values())


def test_render_frames_reproduces_the_data_with_the_new_effects(imaging_sim):
    """The stored noiseless frames are the forward model of the true item (mag, doming, blur);
    without any one of them they are not."""
    from mrepo.sim.reconstruct import raw_stacks

    t = imaging_sim.truth
    raws = raw_stacks(imaging_sim.repo)
    name = next(n for n, it in t.items.items() if it.item.kind == "frames")
    it = t.items[name]
    parts = t.particles_in_item(name)
    stored = np.asarray(raws[name][...])

    def counts(item, **kw):
        r = render_frames(t.maps, item, parts, t.motion(name), **kw)
        return it.electrons_per_pixel[:, None, None] * (1.0 + t.contrast * r)

    np.testing.assert_allclose(stored, counts(t.item(name)), rtol=1e-5, atol=1e-5)
    variants = {
        "no magnification": dataclasses.replace(t.item(name), imaging=dataclasses.replace(
            t.item(name).imaging, mag_matrix=((1.0, 0.0), (0.0, 1.0)))),
        "no doming": dataclasses.replace(t.item(name), grids={}),
    }
    for what, item in variants.items():
        d = np.abs(stored - counts(item)).max()
        print(f"{what}: max |difference| {d:.4f} counts")
        assert d > 1e-3
    assert np.abs(stored[0] - counts(t.item(name), blur=False)[0]).max() > 1e-3
    np.testing.assert_allclose(stored[3], counts(t.item(name), blur=False)[3], rtol=1e-5, atol=1e-5)


def test_imaging_metrics(imaging_sim):
    res = imaging_sim
    truth, cfg = res.truth, res.config
    pop = res.repo.population()
    oracle = truth_population(pop, truth)
    assert astigmatism_error(oracle, truth)["vector_angstrom"] < 1e-9
    assert beam_tilt_error_mrad(oracle, truth) == 0.0
    assert magnification_error(oracle, truth) == 0.0
    assert doming_rmse(oracle, truth) < 1e-6
    for name, it in truth.items.items():
        o = next(i for _s, i in oracle.items() if i.name == name)
        if it.item.kind == "frames":
            assert o.grids["GridCTFDoming"] == it.doming
    ast = astigmatism_error(pop, truth)
    bt = beam_tilt_error_mrad(pop, truth)
    mag = magnification_error(pop, truth)
    dom = doming_rmse(pop, truth)
    print(f"imported: astigmatism {ast}, beam tilt {bt:.3f} mrad, magnification {mag:.4f}, doming {dom:.1f} Å")
    assert ast["n_items"] == cfg.n_movies and ast["magnitude_angstrom"] > 0 and ast["angle_deg"] > 0
    assert ast["vector_angstrom"] >= ast["magnitude_angstrom"]
    assert bt > 0.05
    assert mag == pytest.approx(cfg.mag_anisotropy * math.sqrt(2), rel=1e-6)  # ‖M − I‖_F = a √2
    assert magnification_error(pop, truth, kind=None) == pytest.approx(mag * math.sqrt(2 / 3), rel=1e-6)  # tilts: 0
    assert 0.2 * cfg.doming_angstrom < dom < cfg.doming_angstrom
    # astigmatism: a and θ + 90° with −a are the same; a known error gives that error
    p2 = truth_population(pop, truth)
    for _s, it in p2.items():
        if it.kind == "frames":
            im = it.imaging
            it.imaging = dataclasses.replace(im, astigmatism_angstrom=-im.astigmatism_angstrom,
                                             astigmatism_angle_deg=im.astigmatism_angle_deg + 90.0)
    assert astigmatism_error(p2, truth)["vector_angstrom"] < 1e-6 and astigmatism_error(p2, truth)["angle_deg"] < 1e-6
    for _s, it in p2.items():
        if it.kind == "frames":
            im = it.imaging
            it.imaging = dataclasses.replace(im, astigmatism_angle_deg=im.astigmatism_angle_deg + 5.0)
    e = astigmatism_error(p2, truth)
    assert e["angle_deg"] == pytest.approx(5.0, rel=1e-6) and e["magnitude_angstrom"] < 1e-6
    # the doming metric sees a grid written by a refiner; defocus_rmse is unchanged by doming
    assert defocus_rmse(oracle, truth) < 1e-2
    for _s, it in p2.items():
        if it.kind == "frames":
            it.grids["GridCTFDoming"] = CubicGrid((1, 1, 1), [0.001], unit="um")  # 10 Å everywhere
    assert doming_rmse(p2, truth) > 0


def test_effects_switch_off(tmp_path):
    cfg = preset("tiny", n_movies=1, n_frames=3, particles_per_movie=3, n_tilt_series=0, reconstruct_half_maps=False,
                 snr=None, mag_anisotropy=0.0, doming_angstrom=0.0, blur_frames=0)
    res = simulate(tmp_path / "off", config=cfg, seed=1, progress=False)
    it = next(iter(res.truth.items.values()))
    assert it.item.imaging.mag_matrix == ((1.0, 0.0), (0.0, 1.0)) and not it.item.grids and it.blur is None
    assert preset("tiny", blur_angstrom=0.0).blur_sigma_angstrom().max() == 0
    for bad in (dict(mag_anisotropy=-0.1), dict(mag_anisotropy=0.6), dict(doming_angstrom=-1.0),
                dict(blur_frames=-1), dict(blur_frames=1.5), dict(blur_angstrom=-2.0)):
        with pytest.raises(InvalidInput):
            preset("tiny", **bad)
