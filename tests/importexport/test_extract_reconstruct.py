"""Particle extraction with Warp's motion model, and RELION as the judge of the whole path:
Warp project + RELION refinement → mrepo → export with --extract → relion_reconstruct --ctf."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from scipy.interpolate import CubicSpline

from mrepo.io.extract import evaluate_grid, extract_particles, frame_positions, natural_spline_weights, particle_defocus
from mrepo.io.mrc import read_mrc, write_mrc
from mrepo.io.warp_import import import_warp
from mrepo.model import CubicGrid
from mrepo.model.population import read_item

import synth


def test_spline_matches_einspline_definition():
    """Warp's grids: natural cubic spline through the nodes at linspace(margin, 1 - margin, n)."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=6)
    t = np.linspace(0, 1, 37)
    direct = CubicSpline(np.linspace(0.1, 0.9, 6), v, bc_type="natural")(np.clip(t, 0.1, 0.9))
    np.testing.assert_allclose(natural_spline_weights(6, 0.1, t) @ v, direct, atol=1e-12)
    g = CubicGrid((3, 2, 4), rng.normal(size=(4, 2, 3)))
    xs, ys, zs = np.meshgrid(np.linspace(0, 1, 3), np.linspace(0, 1, 2), np.linspace(0, 1, 4), indexing="ij")
    at_nodes = evaluate_grid(g, xs.ravel(), ys.ravel(), zs.ravel())
    np.testing.assert_allclose(at_nodes, g.values.transpose(2, 1, 0).ravel(), atol=1e-6)  # interpolating
    assert np.allclose(natural_spline_weights(2, 0, np.array([0.25])), [[0.75, 0.25]])  # two nodes: linear


def test_extraction_follows_the_motion(repo, tmp_path):
    proj = synth.frame_project(tmp_path / "warp", n_items=1, frames=5, size=256, spacing=56, noise=0.0, motion_angstrom=12.0)
    import_warp(repo, proj.folder)
    snap = repo.snapshot()
    it = read_item(snap, "warp", "movie_001")
    raw = repo.open_array("HEAD", it.raw_array)
    coords = np.concatenate([proj.coords_px * proj.px, np.zeros((len(proj.coords_px), 1))], axis=1)
    # frame positions: coordinate minus the motion at that frame (Movie.GetPositionInAllFrames)
    pos = frame_positions(it, coords)
    np.testing.assert_allclose(pos[:, :, 0] - coords[:, None, 0], np.broadcast_to(-proj.shifts[0][:, 0], pos.shape[:2]), atol=1e-4)
    box = 48
    truth = np.stack([proj.clean[0][int(round(y)) - 24 : int(round(y)) + 24, int(round(x)) - 24 : int(round(x)) + 24]
                      for x, y in np.round(proj.coords_px)])
    centred = np.round(proj.coords_px)
    coords_c = np.concatenate([centred * proj.px, np.zeros((len(centred), 1))], axis=1)
    with_motion = extract_particles(raw, frame_positions(it, coords_c) / proj.px, box, invert=True, radius_px=None)
    it.grids.pop("GridMovementX")
    it.grids.pop("GridMovementY")
    plain = extract_particles(raw, frame_positions(it, coords_c) / proj.px, box, invert=True, radius_px=None)

    def cc(a, b):
        a = a - a.mean(axis=(1, 2), keepdims=True)
        b = b - b.mean(axis=(1, 2), keepdims=True)
        return (a * b).sum((1, 2)) / np.sqrt((a * a).sum((1, 2)) * (b * b).sum((1, 2)))

    assert cc(with_motion, truth).min() > 0.98
    assert cc(plain, truth).mean() < cc(with_motion, truth).mean() - 0.05
    du, dv, ang = particle_defocus(read_item(snap, "warp", "movie_001"), coords)
    assert np.allclose(du, 10200.0) and np.allclose(dv, 9800.0) and np.allclose(ang, 30.0)


def _lowpass(v, px, res):
    f = np.fft.fftn(v)
    k = np.sqrt(sum(np.meshgrid(*[np.fft.fftfreq(n, px) ** 2 for n in v.shape], indexing="ij")))
    return np.fft.ifftn(f * (k < 1 / res)).real


def _cc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.mark.relion
def test_relion_reconstructs_exported_particles(tmp_path, cli):
    if shutil.which("relion_reconstruct") is None:
        pytest.skip("RELION not installed")
    proj = synth.frame_project(tmp_path / "warp", n_items=3, frames=4, size=448, box=48, spacing=52, noise=1.5)
    truth = synth.render_volume(proj.atoms, proj.box, proj.px, proj.sigma)
    write_mrc(tmp_path / "half1.mrc", truth, proj.px)
    write_mrc(tmp_path / "half2.mrc", truth, proj.px)
    synth.write_relion31_star(tmp_path / "run_data.star", proj)
    cli("init", "repo", cwd=tmp_path, check=True)
    repo = tmp_path / "repo"
    cli("import", "warp", str(proj.folder), "--source", "movies", cwd=repo, check=True)
    out = cli("import", "relion", "--particles", str(tmp_path / "run_data.star"), "--half1", str(tmp_path / "half1.mrc"),
              "--half2", str(tmp_path / "half2.mrc"), "--species", "toy", "--diameter", "90", cwd=repo, check=True)
    assert f"imported species toy: {len(proj.coords_px)} particles in 3 item(s)" in out.stdout
    res = cli("export", "relion", "HEAD", str(tmp_path / "out"), "--species", "toy", "--extract", "48", cwd=repo, check=True)
    assert f"wrote {len(proj.coords_px)} particle images in 3 stack(s)" in res.stdout
    run = subprocess.run(["relion_reconstruct", "--i", "particles.star", "--o", "rec.mrc", "--ctf"], cwd=tmp_path / "out",
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rec = read_mrc(tmp_path / "out" / "rec.mrc")
    assert rec.header.voxel_size[2] == pytest.approx(proj.px, rel=1e-4)
    rec_lp = _lowpass(rec.data.astype(float), proj.px, 10.0)
    good = _cc(rec_lp, _lowpass(truth.astype(float), proj.px, 10.0))
    mirror = _cc(rec_lp, _lowpass(truth[::-1].astype(float), proj.px, 10.0))
    print(f"correlation with the truth at 10 Å: {good:.3f}; with its mirror image: {mirror:.3f}")
    assert good > 0.85 and mirror < 0.5
    # the exported half-maps carry the species' voxel size
    assert read_mrc(tmp_path / "out" / "toy_half1.mrc").header.voxel_size == (proj.px, proj.px, proj.px)
