"""Refinement of the imaging model of a frame series: defocus, astigmatism, beam tilt, magnification, doming.

Data (the first Fourier transform at the aliasing-free size, reused for every CTF)
---------------------------------------------------------------------------------
For each particle the frames are cut out at a box ``L`` large enough to hold the
CTF's delocalised signal without aliasing at the resolution used
(:func:`mrepo.refine.aliasing.aliasing_free_box`, at most twice the map box),
Fourier transformed once, aligned with the series' current motion model
(phase factors at each frame's position) and summed over temporal groups of
frames ``g`` with the frames' exposure weights:

    Y_pg(k) = Σ_{f∈g} w_f(k) X_pf(k) e^{−2πi k·o_pf},   V_g(k) = N(k) Σ_{f∈g} w_f(k)²

``V`` is the noise power of ``Y`` (``N`` from the raw boxes). A frame's signal is already
attenuated by its weight (radiation damage, blur), so the signal in ``Y`` is
``S_g · CTF · P`` with ``S_g = Σ_{f∈g} w_f²``.

These are *not* CTF-multiplied: every CTF parameter is compared against the same
transform, for all particles at once. One temporal group is used unless doming is
refined (then 4, so that the defocus may change over the exposure).

Model and target
----------------
The expected ``Y_pg`` is ``S_g · CTF_pg · P_p`` with ``P_p`` the reference projection
of particle p (its own half-map) at ``Aᵀ (M k, 0)`` and

    CTF_pg(k) = −sin γ(M k; U_pg, V_pg, α) · exp(i γ_odd(M k; τ))          (RELION conventions)
    U_pg, V_pg = D(x_p, t_g) + z_p + δz_p + dome(x_p, t_g) ± a

``D`` the item's defocus (``GridCTF`` where set), ``a``/``α`` the astigmatism, ``τ`` the beam
tilt (mrad), ``M`` the anisotropic magnification (RELION's ``rlnMagMat``), ``dome`` the doming
grid (``GridCTFDoming``, Warp's name). The target is the sum over particles of the NCC of
``Y`` with the model, weighted by ``1/V`` (the likelihood's weighting), over the Fourier
pixels up to the species' resolution.

Steps (M's order)
-----------------
1. **Defocus search** per particle: the NCC at δz from −3000 to +3000 Å in 100 Å steps,
   then 5 rounds that halve the step around the two best values (M's ±300 nm / 10 nm
   search). A particle whose scores are all zero or tied keeps its defocus.
   The NCC becomes a log-likelihood, ``log L = yy · NCC²`` (whitened Gaussian noise, the
   best scale; ``yy = Σ |y|²/v``), and the particles of a series share a prior
   (empirical Bayes): their total offsets ``z + δz`` are ``N(μ, τ²)``, with ``μ`` the
   median of the maximum-likelihood offsets and ``τ²`` their variance less the mean
   variance of the estimates (from the curvature of ``log L`` at each maximum). The search
   maximises the posterior. Where a particle's data determine its defocus well (high
   resolution, much signal) the prior does not matter; where they do not (a flat NCC), the
   particle stays near the series' mean instead of following the noise — at 7 Å the NCC
   of a particle changes by ~6·10⁻⁴ for 200 Å of defocus, which alone gives ~150 Å errors.
2. **L-BFGS** on the chosen groups jointly (defocus per particle; per series
   astigmatism, beam tilt, magnification, doming), exact gradients through autograd,
   with weak Gaussian priors that keep undetermined parameters at their start, and the
   series' defocus prior of step 1 (in the target's units: ``−log prior / (2 · yy · NCC)``).
   Doming is the change of defocus since the start of the exposure: the grid's first
   time node keeps its value (zero), so that it is not confounded with the particles'
   own defocus, which is their defocus at the start of the exposure.

Species coarser than ``min_resolution_angstrom`` (8 Å by default, as in M) do not take
part: their references hold too little signal at the frequencies where the CTF
parameters show. After this step the motion data are extracted again with the new CTF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInput
from ..model import CubicGrid, defocus_at, natural_spline_weights
from .aliasing import aliasing_free_box
from .ctf import Aberrations, CtfParams, ctf_values
from .deformation import normalised_time
from .fourier import rfft2_centered
from .projection import disk_pixels, project_rotations
from .series import (
    SeriesData,
    SeriesModel,
    SpeciesReference,
    _block_geometry,
    _extract_boxes,
    _radial_average,
    _shift_phases,
    mag_distortion,
    particle_ctf,
)

__all__ = ["IMAGING_GROUPS", "ImagingSettings", "ImagingResult", "CtfBlock", "ctf_data", "refine_imaging",
           "defocus_search", "apply_imaging"]

IMAGING_GROUPS = ("defocus", "astigmatism", "beamtilt", "magnification", "doming")

#: Doming grid dims (X, Y, time) as stored in ``GridCTFDoming``.
DOMING_DIMS = (3, 3, 3)


@dataclass
class ImagingSettings:
    """Which imaging parameters to refine and how."""

    groups: frozenset[str] = frozenset({"defocus", "astigmatism", "beamtilt"})
    search_range_angstrom: float = 3000.0  # ±300 nm
    search_step_angstrom: float = 100.0  # 10 nm
    search_rounds: int = 5
    hierarchical_defocus: bool = True  # the particles' defocus spread in a series as a prior (empirical Bayes)
    lbfgs_iterations: int = 30
    temporal_groups: int = 4  # frame groups when doming is refined
    prior_defocus_angstrom: float = 5000.0  # σ of the priors (Gaussian, in units of one particle's NCC·prior_weight)
    prior_astigmatism_angstrom: float = 1000.0
    prior_beam_tilt_mrad: float = 2.0
    prior_magnification: float = 0.05
    prior_doming_angstrom: float = 5000.0
    prior_weight: float = 0.05
    batch: int = 64


@dataclass
class CtfBlock:
    """One species' particles in one series, ready for CTF fitting (see the module docstring).

    Attributes
    ----------
    species: name. rows: (Np,) rows of the block in its species' particle table.
    y: (Np, G, M) complex, aligned exposure-weighted frame sums at box L on the pixels ``flat``.
    s: (G, M) summed exposure weights. inv_v: (G, M) 1 / noise power of ``y``.
    kx, ky: (M,) frequencies (1/Å). rot: (Np, 3, 3) orientations (undistorted, mid-exposure).
    half: (Np,) 0/1. xy: (Np, 2) normalised positions. z: (Np,) the particles' z (Å).
    base_u, base_v: (Np, G) the item's defocus U/V at the particle and group time, without z,
        astigmatism and doming (Å). angle: (Np, G) astigmatism angle from the item (degrees).
    yy: (Np,) Σ inv_v |y|². box: L. ref: the species' reference (r_max in L's Fourier px).
    """

    species: str
    rows: np.ndarray
    y: torch.Tensor
    s: torch.Tensor
    inv_v: torch.Tensor
    kx: torch.Tensor
    ky: torch.Tensor
    rot: torch.Tensor
    half: np.ndarray
    xy: np.ndarray
    z: torch.Tensor
    base: torch.Tensor
    yy: torch.Tensor
    box: int
    ref: SpeciesReference
    t_groups: np.ndarray
    sel: torch.Tensor  # (M,) positions of the block's pixels among the projector's disk pixels
    proj_cache: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return int(self.rows.shape[0])


#: The optimiser's units: every variable is O(1) for a typical correction, so that L-BFGS
#: sees a well-scaled problem (defocus and doming 100 Å, astigmatism 100 Å, beam tilt
#: 0.1 mrad, magnification 10⁻³).
UNITS = {"defocus": 100.0, "astigmatism": 100.0, "beamtilt": 0.1, "magnification": 1e-3, "doming": 100.0}


@dataclass
class ImagingParams:
    """The parameters of one series being fitted, in the optimiser's :data:`UNITS`
    (tensors; the physical values are the properties below)."""

    dz_u: dict[str, torch.Tensor]  # species -> (Np,) defocus offsets / 100 Å
    astig_u: torch.Tensor  # (2,) (a cos 2α, a sin 2α) / 100 Å
    beam_tilt_u: torch.Tensor  # (2,) / 0.1 mrad
    mag0: torch.Tensor  # (2, 2) the starting magnification matrix
    mag_u: torch.Tensor  # (2, 2) its change / 10⁻³
    dome_u: torch.Tensor  # (T, Y, X) / 100 Å

    @property
    def dz(self) -> dict[str, torch.Tensor]:
        return {k: v * UNITS["defocus"] for k, v in self.dz_u.items()}

    @property
    def astig(self) -> torch.Tensor:
        return self.astig_u * UNITS["astigmatism"]

    @property
    def beam_tilt(self) -> torch.Tensor:
        return self.beam_tilt_u * UNITS["beamtilt"]

    @property
    def mag(self) -> torch.Tensor:
        return self.mag0 + self.mag_u * UNITS["magnification"]

    @property
    def dome(self) -> torch.Tensor:
        return self.dome_u * UNITS["doming"]

    def variables(self, groups: frozenset[str]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        if "defocus" in groups:
            out += list(self.dz_u.values())
        if "astigmatism" in groups:
            out.append(self.astig_u)
        if "beamtilt" in groups:
            out.append(self.beam_tilt_u)
        if "magnification" in groups:
            out.append(self.mag_u)
        if "doming" in groups:
            out.append(self.dome_u)
        return out

    def copy(self) -> "ImagingParams":
        return ImagingParams({k: v.detach().clone() for k, v in self.dz_u.items()}, self.astig_u.detach().clone(),
                             self.beam_tilt_u.detach().clone(), self.mag0.clone(), self.mag_u.detach().clone(),
                             self.dome_u.detach().clone())

    def astigmatism(self) -> tuple[float, float]:
        """(astigmatism Å, angle of U from x in degrees in [0, 180))."""
        a = self.astig.detach().cpu().numpy().astype(np.float64)
        return float(np.hypot(a[0], a[1])), float(np.degrees(0.5 * np.arctan2(a[1], a[0])) % 180.0)


@dataclass
class ImagingResult:
    """What :func:`refine_imaging` found for one series."""

    params: ImagingParams
    score_before: float
    score_after: float
    searched: dict[str, np.ndarray]  # species -> (Np,) δz after the grid search (Å)
    kept: dict[str, int]  # species -> particles whose search scores were all tied (kept their defocus)
    box: int = 0
    priors: dict[str, "DefocusPrior"] = field(default_factory=dict)  # species -> the series' defocus prior


# ---------------------------------------------------------------------------- data
def ctf_data(
    item: Any,
    frames: Any,
    data: SeriesData,
    model: SeriesModel,
    refs: dict[str, SpeciesReference],
    species: list[str],
    *,
    groups: int = 1,
    device: str | torch.device = "cpu",
) -> dict[str, CtfBlock]:
    """Cut, transform once, align and sum the frames of every particle of ``species`` (module docstring).

    ``refs`` give each species' resolution limit (``r_max_px`` of its box).
    """
    dev = torch.device(device)
    im = item.imaging
    pix = float(im.pixel_size_angstrom)
    geom = data.geometry
    f = geom.n_frames
    g_of_f = np.minimum((np.arange(f) * groups) // max(f, 1), groups - 1)
    t_groups = np.array([normalised_time(f, dtype=torch.float64).numpy()[g_of_f == g].mean() for g in range(groups)])
    fw = data.frame_weights
    out: dict[str, CtfBlock] = {}
    for sp in species:
        block = data.blocks.get(sp)
        if block is None or not len(block):
            continue
        ref = refs[sp]
        b = block.box
        res = b * pix / max(ref.r_max_px, 1e-6)  # Å
        params = particle_ctf(item, geom, block.coords0)
        work = aliasing_free_box(params, pix, max(res, 2 * pix), min_box=b)
        work = int(min(work, 2 * b, 2 * (min(geom.height_px, geom.width_px) // 2)))
        r_max = ref.r_max_px * work / b
        flat, kxi, kyi = disk_pixels(work, r_max, device=dev)
        sel = ((kxi * kxi + kyi * kyi) >= 1.0).nonzero().squeeze(1)  # no DC
        flat, kxi, kyi = flat[sel], kxi[sel], kyi[sel]
        kx, ky = kxi / (work * pix), kyi / (work * pix)
        with torch.no_grad():
            origin, rots = _block_geometry(data, block, model)
            if block.distortion is not None:  # the undistorted orientations: magnification is a parameter here
                rots = torch.linalg.solve(block.distortion, rots)
        n = len(block)
        w_f = fw.weights(work, pix, device=dev).reshape(f, -1)[:, flat]  # (F, M)
        y = torch.zeros((n, groups, flat.numel()), dtype=torch.complex64, device=dev)
        w2 = torch.zeros((groups, flat.numel()), device=dev)
        power = torch.zeros((work, work // 2 + 1), device=dev)
        for i in range(f):
            raw = torch.as_tensor(_extract_boxes(frames[i : i + 1], block.centres_px[:, i : i + 1], work)[:, 0], device=dev)
            ft = rfft2_centered(raw)
            power += (ft.abs() ** 2).mean(0)
            phi = _shift_phases(kxi, kyi, origin[:, i], work, pix)  # (Np, M)
            g = int(g_of_f[i])
            y[:, g] += ft.reshape(n, -1)[:, flat] * phi.conj() * w_f[i]
            w2[g] += w_f[i] ** 2
        s = w2  # each frame's signal already carries its weight w_f once: Y holds Σ w_f² CTF P
        noise = _radial_average(power / f, work).reshape(-1)[flat]
        inv_v = 1.0 / (w2 * noise[None]).clamp(min=1e-30)
        yy = (inv_v[None] * (y.real**2 + y.imag**2)).sum(dim=(1, 2))
        x, yn = geom.normalised_xy(block.coords0[:, 0, :2])
        bu, bv, ang = defocus_at(_without_doming(item), x[:, None], yn[:, None], t_groups[None, :])
        base = torch.as_tensor(0.5 * (bu + bv), dtype=torch.float32, device=dev)  # astigmatism is a parameter
        out[sp] = CtfBlock(sp, block.index, y, s, inv_v, kx, ky, rots[:, rots.shape[1] // 2].contiguous(), block.half,
                           np.stack([x, yn], 1), torch.as_tensor(block.coords0[:, 0, 2], dtype=torch.float32, device=dev),
                           base, yy, work, SpeciesReference(ref.name, ref.halves, ref.box, ref.pixel_size_angstrom,
                                                            ref.symmetry, float(r_max)), t_groups, sel)
    return out


def _without_doming(item: Any) -> Any:
    if "GridCTFDoming" not in item.grids:
        return item
    import copy

    it = copy.copy(item)
    it.grids = {k: v for k, v in item.grids.items() if k != "GridCTFDoming"}
    return it


# ---------------------------------------------------------------------------- model
def initial_params(item: Any, blocks: dict[str, CtfBlock], *, device=None) -> ImagingParams:
    im = item.imaging
    a, ang = float(im.astigmatism_angstrom), math.radians(float(im.astigmatism_angle_deg))
    dome = item.grids.get("GridCTFDoming")
    if dome is not None and dome.dims == DOMING_DIMS and dome.margins == (0.0, 0.0, 0.0):
        d0 = torch.as_tensor(dome.values * 1e4, dtype=torch.float32, device=device)
    else:
        d0 = torch.zeros(DOMING_DIMS[::-1], device=device)
    return ImagingParams(
        dz_u={k: torch.zeros(len(b), device=device) for k, b in blocks.items()},
        astig_u=torch.tensor([a * math.cos(2 * ang), a * math.sin(2 * ang)], device=device) / UNITS["astigmatism"],
        beam_tilt_u=torch.tensor([float(v) for v in im.beam_tilt_mrad], device=device) / UNITS["beamtilt"],
        mag0=torch.as_tensor(np.asarray(im.mag_matrix, np.float32), device=device).clone(),
        mag_u=torch.zeros((2, 2), device=device),
        dome_u=d0 / UNITS["doming"],
    )


def _dome_basis(block: CtfBlock) -> torch.Tensor:
    """(Np, G, T·Y·X) weights of the doming grid's nodes at the particles and group times."""
    if "dome" not in block.proj_cache:
        gx, gy, gt = DOMING_DIMS
        wx = natural_spline_weights(gx, 0.0, block.xy[:, 0])  # (Np, X)
        wy = natural_spline_weights(gy, 0.0, block.xy[:, 1])
        wt = natural_spline_weights(gt, 0.0, block.t_groups)  # (G, T)
        w = np.einsum("gt,py,px->pgtyx", wt, wy, wx).reshape(len(block), len(block.t_groups), -1)
        block.proj_cache["dome"] = torch.as_tensor(w, dtype=torch.float32, device=block.y.device)
    return block.proj_cache["dome"]


def _projections(block: CtfBlock, mag: torch.Tensor, grad: bool, batch: int) -> torch.Tensor:
    """(Np, M) projections at ``Aᵀ (M k, 0)`` on the block's pixels (each particle its half-map)."""
    key = ("proj", tuple(round(float(v), 7) for v in mag.detach().reshape(-1).tolist()))
    if not grad and key in block.proj_cache:
        return block.proj_cache[key]
    rots = mag_distortion(mag, device=block.y.device) @ block.rot
    out = torch.zeros((len(block), block.kx.numel()), dtype=torch.complex64, device=block.y.device)
    for h in (0, 1):
        idx = torch.as_tensor(np.flatnonzero(block.half == h), device=block.y.device)
        for s0 in range(0, idx.numel(), batch):
            sub = idx[s0 : s0 + batch]
            proj = project_rotations(block.ref.halves[h], rots[sub], None, out_box=block.box, r_max_px=block.ref.r_max_px,
                                     flat_output=True)[:, block.sel]
            out = out.index_copy(0, sub, proj)
    if not grad:
        block.proj_cache = {k: v for k, v in block.proj_cache.items() if k[0] != "proj"}
        block.proj_cache[key] = out
    return out


def _ctf(block: CtfBlock, item: Any, p: ImagingParams, dz: torch.Tensor) -> torch.Tensor:
    """(Np, G, M) complex CTF of the block's particles under parameters ``p`` (+ extra δz (Np,))."""
    im = item.imaging
    d = block.base + (block.z + dz)[:, None] + (_dome_basis(block) @ p.dome.reshape(-1))  # (Np, G)
    a = torch.sqrt(p.astig[0] ** 2 + p.astig[1] ** 2 + 1e-12)
    ang = torch.rad2deg(0.5 * torch.atan2(p.astig[1], p.astig[0]))
    params = CtfParams(voltage_kv=float(im.voltage_kv), cs_mm=float(im.cs_mm), amplitude_contrast=float(im.amplitude_contrast),
                       defocus_u_angstrom=d + a, defocus_v_angstrom=d - a,
                       defocus_angle_deg=ang, phase_shift_deg=float(im.phase_shift_deg))
    ab = Aberrations(beam_tilt_mrad=p.beam_tilt, mag_matrix=p.mag,
                     odd_zernike=tuple(im.odd_zernike) or None, even_zernike=tuple(im.even_zernike) or None)
    return ctf_values(params, block.kx, block.ky, aberrations=ab, damping=False)


def _ncc(block: CtfBlock, proj: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """(..., Np) NCC of each particle (ctf (..., Np, G, M) broadcasts over leading dims)."""
    m = block.s * ctf * proj[:, None, :]  # (..., Np, G, M)
    num = (block.inv_v * (block.y.real * m.real + block.y.imag * m.imag)).sum(dim=(-2, -1))
    mm = (block.inv_v * (m.real**2 + m.imag**2)).sum(dim=(-2, -1))
    return num / torch.sqrt(block.yy * mm + 1e-30)


def series_imaging_score(blocks: dict[str, CtfBlock], item: Any, p: ImagingParams, *, grad_proj: bool,
                         batch: int = 64) -> torch.Tensor:
    total = torch.zeros(())
    for sp, blk in blocks.items():
        proj = _projections(blk, p.mag, grad_proj, batch)
        total = total + _ncc(blk, proj, _ctf(blk, item, p, p.dz[sp])).sum()
    return total


# ---------------------------------------------------------------------------- the search
@dataclass
class DefocusPrior:
    """The particles' spread of defocus in one series, estimated from the search itself
    (empirical Bayes): their total offsets ``z + δz`` are drawn from ``N(mean, sd²)``.
    ``log_l_scale`` (Np,) converts an NCC change near the optimum into log-likelihood
    (``2 · yy · NCC``; infinite for particles that keep their value)."""

    mean_angstrom: float
    sd_angstrom: float
    log_l_scale: np.ndarray


def _log_likelihood(block: CtfBlock, scores: torch.Tensor) -> torch.Tensor:
    """(C, Np) log-likelihood (up to a constant) of each particle at each candidate, from its NCC:
    with whitened Gaussian noise and the best scale, ``log L = yy · NCC²`` (``yy = Σ |y|²/v``);
    an anti-correlated model explains nothing (0)."""
    return block.yy[None] * scores.clamp(min=0.0) ** 2


def defocus_search(block: CtfBlock, item: Any, p: ImagingParams, settings: ImagingSettings, *, tie: float = 1e-7
                   ) -> tuple[np.ndarray, np.ndarray, DefocusPrior | None]:
    """Coarse-to-fine search of each particle's defocus offset (module docstring, step 1).

    Returns (δz (Np,) Å, tied (Np,) bool: all scores equal or zero, the particle keeps its
    value, the series' defocus prior or None when it is not used).
    """
    with torch.no_grad():
        proj = _projections(block, p.mag, False, settings.batch)
        n = len(block)
        dev = block.y.device
        r, step = settings.search_range_angstrom, settings.search_step_angstrom
        cand = torch.arange(-r, r + 0.5 * step, step, device=dev)  # (C,)
        scores = _scores(block, item, p, proj, cand[:, None].expand(-1, n))  # (C, Np)
        spread = (scores.max(0).values - scores.min(0).values)
        tied = (spread <= tie) | (scores.abs().max(0).values <= tie)
        loglik = _log_likelihood(block, scores)
        prior = _defocus_prior(block, cand, loglik, tied, step) if settings.hierarchical_defocus else None

        def posterior(ll: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
            if prior is None:
                return ll
            total = block.z[None] + dz - prior.mean_angstrom
            return ll - total**2 / (2 * prior.sd_angstrom**2)

        post = posterior(loglik, cand[:, None].expand(-1, n))
        best2 = torch.topk(post, 2, dim=0).indices  # (2, Np)
        tops = cand[best2]  # (2, Np) the two best values
        top_post = post.gather(0, best2)
        for _ in range(settings.search_rounds):
            step /= 2
            c = torch.cat([tops, tops - step, tops + step], dim=0)  # (6, Np)
            pc = posterior(_log_likelihood(block, _scores(block, item, p, proj, c)), c)
            allc = torch.cat([c, tops], 0)
            allp = torch.cat([pc, top_post], 0)
            order = torch.topk(allp, 2, dim=0).indices
            tops = allc.gather(0, order)
            top_post = allp.gather(0, order)
        best = tops[0].clone()
        best[tied] = 0.0
    return best.cpu().numpy(), tied.cpu().numpy(), prior


def _defocus_prior(block: CtfBlock, cand: torch.Tensor, loglik: torch.Tensor, tied: torch.Tensor, step: float
                   ) -> DefocusPrior | None:
    """Empirical-Bayes prior of a series' particle defocus (module docstring, step 1): each
    particle's maximum-likelihood offset and its uncertainty (the curvature of ``log L`` at
    the maximum); the mean and the spread of the total offsets ``z + δz`` less the part the
    uncertainties explain. None with fewer than 4 particles that carry signal."""
    free = ~tied
    if int(free.sum()) < 4:
        return None
    c = cand.shape[0]
    i = loglik.argmax(0).clamp(1, c - 2)  # (Np,)
    cols = torch.arange(loglik.shape[1], device=loglik.device)
    l0, lm, lp = loglik[i, cols], loglik[i - 1, cols], loglik[i + 1, cols]
    curv = (lp + lm - 2 * l0) / step**2  # (Np,) ≤ 0 at a maximum
    var = torch.where(curv < 0, -1.0 / curv.clamp(max=-1e-30), torch.full_like(curv, float("inf")))
    total = (block.z + cand[loglik.argmax(0)])[free].double()
    var = var[free].double().clamp(max=float(cand[-1] - cand[0]) ** 2)
    mean = float(total.median())
    spread = float(((total - mean) ** 2).mean() - var.mean())
    sd = math.sqrt(max(spread, (0.25 * step) ** 2))
    ncc = (loglik.max(0).values / block.yy.clamp(min=1e-30)).sqrt()  # (Np,) the best NCC
    scale = (2 * block.yy * ncc.clamp(min=1e-3)).clamp(min=1e-12)
    scale = torch.where(tied, torch.full_like(scale, float("inf")), scale).cpu().numpy()  # tied: no prior term
    return DefocusPrior(mean, sd, scale)


def _scores(block: CtfBlock, item: Any, p: ImagingParams, proj: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """(C, Np) NCC of every particle at C candidate offsets each ((C, Np) Å)."""
    out = []
    for c in range(dz.shape[0]):
        out.append(_ncc(block, proj, _ctf(block, item, p, dz[c])))
    return torch.stack(out)


# ---------------------------------------------------------------------------- refinement
def _prior(p: ImagingParams, p0: ImagingParams, s: ImagingSettings, groups: frozenset[str]) -> torch.Tensor:
    total = torch.zeros(())
    if "defocus" in groups:
        for k, v in p.dz.items():
            total = total + ((v - p0.dz[k]) ** 2).sum() / (2 * s.prior_defocus_angstrom**2)
    if "astigmatism" in groups:
        total = total + ((p.astig - p0.astig) ** 2).sum() / (2 * s.prior_astigmatism_angstrom**2)
    if "beamtilt" in groups:
        total = total + ((p.beam_tilt - p0.beam_tilt) ** 2).sum() / (2 * s.prior_beam_tilt_mrad**2)
    if "magnification" in groups:
        total = total + ((p.mag - p0.mag) ** 2).sum() / (2 * s.prior_magnification**2)
    if "doming" in groups:
        total = total + ((p.dome - p0.dome) ** 2).sum() / (2 * s.prior_doming_angstrom**2)
    return s.prior_weight * total


def _defocus_prior_term(blocks: dict[str, CtfBlock], p: ImagingParams, priors: dict[str, DefocusPrior]) -> torch.Tensor:
    """The series' defocus priors in the units of the target (a sum of NCCs): ``−log prior``
    divided by each particle's ``2 · yy · NCC``."""
    total = torch.zeros(())
    dz = p.dz
    for sp, pr in priors.items():
        blk = blocks[sp]
        w = torch.as_tensor(1.0 / pr.log_l_scale, dtype=torch.float32, device=blk.y.device)
        total = total + (w * (blk.z + dz[sp] - pr.mean_angstrom) ** 2).sum() / (2 * pr.sd_angstrom**2)
    return total


def refine_imaging(blocks: dict[str, CtfBlock], item: Any, settings: ImagingSettings, *, device=None) -> ImagingResult:
    """Defocus search, then L-BFGS on the chosen groups (module docstring). Pure: the item is not changed."""
    groups = frozenset(settings.groups)
    unknown = groups - set(IMAGING_GROUPS)
    if unknown:
        raise InvalidInput(f"unknown imaging parameter group(s) {', '.join(sorted(unknown))}")
    p = initial_params(item, blocks, device=device)
    with torch.no_grad():
        before = float(series_imaging_score(blocks, item, p, grad_proj=False, batch=settings.batch))
    searched: dict[str, np.ndarray] = {}
    kept: dict[str, int] = {}
    tied_of = {sp: np.zeros(len(b), bool) for sp, b in blocks.items()}
    priors: dict[str, DefocusPrior] = {}
    if "defocus" in groups:
        for sp, blk in blocks.items():
            dz, tied, prior = defocus_search(blk, item, p, settings)
            if prior is not None:
                priors[sp] = prior
            p.dz_u[sp] = torch.as_tensor(dz / UNITS["defocus"], dtype=torch.float32, device=blk.y.device)
            searched[sp] = dz
            kept[sp] = int(tied.sum())
            tied_of[sp] = tied
    p0 = p.copy()
    variables = p.variables(groups)
    n = sum(len(b) for b in blocks.values())
    if variables and settings.lbfgs_iterations > 0 and n:
        for v in variables:
            v.requires_grad_(True)
        hooks = []
        if "defocus" in groups:  # particles whose scores were all tied keep their defocus
            for sp, blk in blocks.items():
                free = torch.as_tensor(~tied_of[sp], dtype=torch.float32, device=blk.y.device)
                hooks.append(p.dz_u[sp].register_hook(lambda g, free=free: g * free))
        if "doming" in groups:  # doming is the change since the start of the exposure: the first time node stays
            hold = torch.ones_like(p.dome_u)
            hold[0] = 0.0
            hooks.append(p.dome_u.register_hook(lambda g, hold=hold: g * hold))
        opt = torch.optim.LBFGS(variables, lr=1.0, max_iter=settings.lbfgs_iterations, history_size=10,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-12)
        grad_proj = "magnification" in groups

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = (-series_imaging_score(blocks, item, p, grad_proj=grad_proj, batch=settings.batch)
                    + _prior(p, p0, settings, groups) + _defocus_prior_term(blocks, p, priors)) / n
            loss.backward()
            return loss

        opt.step(closure)
        for h in hooks:
            h.remove()
    for v in p.variables(frozenset(IMAGING_GROUPS)):
        v.requires_grad_(False)
    with torch.no_grad():
        after = float(series_imaging_score(blocks, item, p, grad_proj=False, batch=settings.batch))
    return ImagingResult(p, before, after, searched, kept, max((b.box for b in blocks.values()), default=0), priors)


def apply_imaging(item: Any, particles: dict[str, Any], result: ImagingResult, blocks: dict[str, CtfBlock],
                  groups: frozenset[str]) -> dict[str, Any]:
    """Write the refined parameters into the item (in place) and return the species' new
    coordinates arrays (z updated); ``particles``: species -> Particles (full tables)."""
    from dataclasses import replace

    p = result.params
    im = item.imaging
    changes: dict[str, Any] = {}
    if "astigmatism" in groups:
        a, ang = p.astigmatism()
        im = replace(im, astigmatism_angstrom=round(a, 3), astigmatism_angle_deg=round(ang, 3))
        for g in ("GridCTFDefocusDelta", "GridCTFDefocusAngle"):  # folded into the refined value
            item.grids.pop(g, None)
    if "beamtilt" in groups:
        bt = p.beam_tilt.detach().cpu().numpy()
        im = replace(im, beam_tilt_mrad=(round(float(bt[0]), 5), round(float(bt[1]), 5)))
    if "magnification" in groups:
        m = p.mag.detach().cpu().numpy().astype(np.float64)
        im = replace(im, mag_matrix=tuple(tuple(round(float(v), 7) for v in r) for r in m))
    item.imaging = im
    if "doming" in groups:
        item.grids["GridCTFDoming"] = CubicGrid(DOMING_DIMS, p.dome.detach().cpu().numpy() / 1e4, unit="um")
    coords = {}
    if "defocus" in groups:
        for sp, blk in blocks.items():
            c = np.array(particles[sp].coordinates, np.float32, copy=True)
            c[blk.rows, :, 2] += p.dz[sp].detach().cpu().numpy()[:, None]
            coords[sp] = c
            changes[sp] = float(np.sqrt(np.mean(p.dz[sp].detach().cpu().numpy() ** 2)))
    return {"coordinates": coords, "rms_defocus_change_angstrom": changes}
