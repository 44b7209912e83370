"""The imaging-model step of ``mrepo refine`` (:mod:`mrepo.refine.imaging`) against the truth.

Noiseless simulated frame series with true poses and motion and the true species maps as
references: what is left to find is the imaging model (per-particle defocus, astigmatism,
beam tilt, anisotropic magnification, doming), which starts from the simulator's "as
imported" values. The tolerances are what these noiseless data allow at 3 Å/px (measured:
defocus 2–4 Å RMS, astigmatism within 2.5 Å and 0.5°, beam tilt within 0.06 mrad,
magnification within 2·10⁻⁴; a doming of 150–190 Å RMS to within 8–10 %, the
per-particle defocus it competes with to within 10–13 Å)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

import mrepo
from mrepo.errors import InvalidInput
from mrepo.refine.imaging import ImagingSettings, apply_imaging, ctf_data, refine_imaging
from mrepo.refine.projection import prepare_volume
from mrepo.refine.run import collect_series
from mrepo.refine.series import SpeciesReference, initial_model
from mrepo.sim import load_truth, preset, simulate
from mrepo.sim.render import doming_offsets
from mrepo.sim.truth import truth_population
from mrepo.store.arrays import open_view_array

CPU = torch.device("cpu")
BASE = dict(snr=None, n_movies=2, particles_per_movie=24, n_frames=4, n_tilt_series=1, tilt_step_deg=30.0,
            particles_per_tilt_series=4, blur_frames=0)


class Case:
    """A noiseless simulation, its truth, and the large species' CTF blocks of each movie with
    true poses, motion and maps, the imported imaging model and the imported defocus (z)."""

    def __init__(self, root, groups: int, **overrides):
        simulate(root, config=preset("tiny", **BASE, **overrides), seed=2, progress=False)
        self.truth = load_truth(root)
        self.repo = mrepo.open_repo(root)
        pop0 = self.repo.population("HEAD")
        pop = truth_population(pop0, self.truth)
        t = pop.species["large"].particles
        c = np.array(t.coordinates, np.float32)
        c[:, :, 2] = np.asarray(pop0.species["large"].particles.load().coordinates)[:, :1, 2]  # imported z
        self.parts = {"large": dataclasses.replace(t, coordinates=c)}
        for (_s, it), (_s0, it0) in zip(pop.items(), pop0.items()):
            it.imaging = it0.imaging  # imported imaging model
            it.grids.pop("GridCTFDoming", None)
        series, items_of = collect_series(self.repo.snapshot("HEAD"), pop, ["large"], self.parts, device=CPU)
        sp = pop.species["large"]
        fv = prepare_volume(self.truth.maps["large"], sp.pixel_size_angstrom)
        refs = {"large": SpeciesReference("large", (fv, fv), sp.box, sp.pixel_size_angstrom, sp.symmetry, sp.box / 2 - 1)}
        tz = np.asarray(self.truth.particles["large"].coordinates)[:, 0, 2]
        self.movies = []
        for key, data in series.items():
            if not key.startswith("movies/"):
                continue
            item = items_of[key][1]
            frames = open_view_array(self.repo.snapshot("HEAD"), item.raw_array)
            blocks = ctf_data(item, frames, data, initial_model(data, [], 1, device=CPU), refs, ["large"], groups=groups)
            true_item = self.truth.items[item.name].item
            rows = blocks["large"].rows
            want = (tz - c[:, 0, 2])[rows] + (true_item.imaging.defocus_angstrom - item.imaging.defocus_angstrom)
            self.movies.append((item, blocks, true_item, want))


@pytest.fixture(scope="module")
def with_mag(tmp_path_factory):
    return Case(tmp_path_factory.mktemp("imaging") / "mag", 1, doming_angstrom=0.0, mag_anisotropy=0.01)


@pytest.fixture(scope="module")
def with_doming(tmp_path_factory):
    return Case(tmp_path_factory.mktemp("imaging") / "dome", 4, doming_angstrom=300.0, mag_anisotropy=0.0)


def _astig_vec(a: float, ang: float) -> np.ndarray:
    return a * np.array([np.cos(np.radians(2 * ang)), np.sin(np.radians(2 * ang))])


def test_defocus_astigmatism_beam_tilt_and_magnification_are_recovered(with_mag):
    groups = frozenset({"defocus", "astigmatism", "beamtilt", "magnification"})
    for item, blocks, true_item, want in with_mag.movies:
        ti = true_item.imaging
        res = refine_imaging(blocks, item, ImagingSettings(groups=groups))
        start = np.sqrt(np.mean(want**2))
        search = np.sqrt(np.mean((res.searched["large"] - want) ** 2))
        final = np.sqrt(np.mean((res.params.dz["large"].numpy() - want) ** 2))
        a, ang = res.params.astigmatism()
        astig_err = np.linalg.norm(_astig_vec(a, ang) - _astig_vec(ti.astigmatism_angstrom, ti.astigmatism_angle_deg))
        bt_err = np.linalg.norm(res.params.beam_tilt.numpy() - np.asarray(ti.beam_tilt_mrad))
        mag_err = np.linalg.norm(res.params.mag.detach().numpy() - np.asarray(ti.mag_matrix))
        mag_start = np.linalg.norm(np.asarray(item.imaging.mag_matrix) - np.asarray(ti.mag_matrix))
        print(f"{item.name}: defocus {start:.0f} -> search {search:.1f} -> {final:.1f} Å; astigmatism error {astig_err:.1f} Å; "
              f"beam tilt {bt_err:.3f} mrad; magnification {mag_start:.4f} -> {mag_err:.5f}")
        assert start > 100 and search < 25 and final < 10
        assert astig_err < 6.0
        assert bt_err < 0.08 and np.linalg.norm(ti.beam_tilt_mrad) > 0.15
        assert mag_start > 0.01 and mag_err < 1e-3
        assert res.score_after > res.score_before
        assert res.kept["large"] == 0


def test_doming_is_recovered(with_doming):
    groups = frozenset({"defocus", "astigmatism", "beamtilt", "doming"})
    for item, blocks, true_item, want in with_doming.movies:
        res = refine_imaging(blocks, item, ImagingSettings(groups=groups))
        fitted = copy.deepcopy(item)
        done = apply_imaging(fitted, with_doming.parts, res, blocks, groups)
        assert "GridCTFDoming" in fitted.grids and fitted.grids["GridCTFDoming"].unit == "um"
        rows = blocks["large"].rows
        xy = np.asarray(with_doming.truth.particles["large"].coordinates, np.float64)[rows]
        true_dome = doming_offsets(true_item, xy, item.n)
        err = np.sqrt(np.mean((doming_offsets(fitted, xy, item.n) - true_dome) ** 2))
        size = np.sqrt(np.mean(true_dome**2))
        print(f"{item.name}: doming {size:.0f} Å RMS, error {err:.1f} Å RMS")
        assert size > 100 and err < 0.15 * size
        dz_err = np.sqrt(np.mean((res.params.dz["large"].numpy() - want) ** 2))
        assert dz_err < 20
        # the defocus folds into the particles' z, the item keeps its own (the input is untouched)
        new_z = done["coordinates"]["large"][rows, 0, 2]
        old_z = np.asarray(with_doming.parts["large"].coordinates)[rows, 0, 2]
        np.testing.assert_allclose(new_z - old_z, res.params.dz["large"].numpy(), atol=1e-2)
        assert "GridCTFDoming" not in item.grids


def test_a_particle_without_signal_keeps_its_defocus(with_mag):
    """M's defocus search once wrecked maps by moving particles whose scores were all zero:
    a particle whose data are zero is reported as kept and its defocus does not move, in the
    search or in L-BFGS."""
    item, blocks, _true, _want = with_mag.movies[0]
    blk = copy.copy(blocks["large"])
    y = blk.y.clone()
    y[0] = 0
    blk.y = y
    blk.yy = blk.yy.clone()
    blk.yy[0] = 0
    blk.proj_cache = {}
    res = refine_imaging({"large": blk}, item, ImagingSettings(groups=frozenset({"defocus", "astigmatism"})))
    assert res.kept["large"] == 1
    assert res.searched["large"][0] == 0.0
    assert float(res.params.dz["large"][0]) == 0.0
    assert np.abs(res.params.dz["large"].numpy()[1:]).max() > 50  # the others did move


def test_unknown_group_is_an_error(with_mag):
    item, blocks, _true, _want = with_mag.movies[0]
    with pytest.raises(InvalidInput, match="unknown imaging parameter"):
        refine_imaging(blocks, item, ImagingSettings(groups=frozenset({"defocus", "chromatic"})))


def test_fitted_weights_weight_the_reconstruction_and_only_on_request_the_target(with_mag):
    """`--weights-in-target` off (the default): the target keeps the exposure model (its
    weights and dose crop) while the reconstruction takes the fitted weights."""
    from mrepo.refine.series import _frequency_mask, set_frame_weights
    from mrepo.refine.weights import FrameWeights

    item = with_mag.movies[0][0]
    data = next(iter(collect_series(with_mag.repo.snapshot("HEAD"), with_mag.repo.population("HEAD"), ["large"],
                                    with_mag.parts, device=CPU)[0].values()))
    box = next(iter(data.blocks.values())).box
    model = FrameWeights.exposure(data.geometry.exposure_mid)
    fitted = FrameWeights(model.bfactor + np.linspace(0, 400, len(model)), np.full(len(model), 50.0),
                          np.zeros(len(model)), np.linspace(1.0, 0.5, len(model)))
    set_frame_weights(data, fitted, target=False)
    torch.testing.assert_close(data.dose_w[box], fitted.weights(box, item.imaging.pixel_size_angstrom))
    torch.testing.assert_close(data.target_w[box], model.weights(box, item.imaging.pixel_size_angstrom))
    assert not torch.equal(_frequency_mask(data, box, box / 2, CPU, target=True), _frequency_mask(data, box, box / 2, CPU))
    set_frame_weights(data, fitted, target=True)
    assert data.target_w is None and data.target_kmax is None
    torch.testing.assert_close(_frequency_mask(data, box, box / 2, CPU, target=True), _frequency_mask(data, box, box / 2, CPU))
