"""Exposure weights of the frames of a series: the exposure model, and weights fitted to the data (M).

Model
-----
Frame ``f`` of a series carries the signal attenuated by

    w_f(k) = s_f · exp(−(B_f + ΔB_f cos 2(ψ − θ_f)) |k|² / 4)          (k in 1/Å, ψ its direction)

with a B-factor ``B_f`` (Å², positive dampens: RELION's sign), an anisotropic part
``ΔB_f`` along the direction ``θ_f`` (degrees from x; more damping along θ, as a
blur along θ gives), and a scale ``s_f``. Without fitted weights mrepo uses the
exposure model, ``B_f = 4 Å² · d_f`` for the accumulated exposure ``d_f`` at the
middle of the frame, ``ΔB = 0``, ``s = 1`` (:mod:`mrepo.refine.dose`).

Fitting (M, "data-driven weights")
----------------------------------
At the end of a refinement iteration the particles of every species are compared
with their references frame by frame: for each frame, shell and direction sector
the normalised cross-correlation between the CTF-premultiplied particle images
``d`` and the model ``CTF² · P`` (no exposure weight) summed over particles,

    NCC_f(k) = Σ_p Re(d_pf conj(m_pf)) / sqrt(Σ_p |d_pf|² Σ_p |m_pf|²).

Since the noise is the same in every frame, ``NCC_f(k) ∝ A_sp(|k|) · w_f(k)``: a
profile ``A_sp`` per species and shell (its signal) times the frame's weight. All
frames' ``(B_f, ΔB_f, θ_f, s_f)`` and the profiles are fitted jointly by weighted
least squares (L-BFGS), each species' shells weighted by its FSC (clipped to
[0, 1]): species are combined by how much signal their references hold there. Only
differences between frames are determined: ``B`` is shifted so that the least
damped frame has ``B = 0`` (M sets the highest B, in its sign, to zero) and the
scales so that the largest is 1.

Storage (Warp/M's names and sign): ``GridDoseBfacs`` = ``−B_f``,
``GridDoseBfacsDelta`` = ``−ΔB_f``, ``GridDoseBfacsAngle`` = ``θ_f``,
``GridDoseWeights`` = ``s_f``, each 1×1×F (:meth:`FrameWeights.to_grids`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DegenerateResult, InvalidInput
from .dose import B_PER_EXPOSURE_A2
from .fourier import freq_grid_2d

__all__ = ["FrameWeights", "NccStats", "fit_frame_weights", "plot_frame_weights", "WEIGHT_GRIDS"]

WEIGHT_GRIDS = ("GridDoseBfacs", "GridDoseBfacsDelta", "GridDoseBfacsAngle", "GridDoseWeights")


@dataclass
class FrameWeights:
    """Per-frame exposure weights (see the module docstring); each field (F,)."""

    bfactor: np.ndarray  # Å², positive dampens
    delta: np.ndarray  # Å², anisotropic part (more damping along angle_deg)
    angle_deg: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        self.bfactor, self.delta, self.angle_deg, self.scale = (
            np.asarray(v, np.float64).reshape(-1) for v in (self.bfactor, self.delta, self.angle_deg, self.scale))
        if not (len(self.bfactor) == len(self.delta) == len(self.angle_deg) == len(self.scale)):
            raise InvalidInput("frame weights need one value per frame in every field")

    def __len__(self) -> int:
        return len(self.bfactor)

    @classmethod
    def exposure(cls, exposure_mid: Any, b_per_exposure: float = B_PER_EXPOSURE_A2) -> "FrameWeights":
        """The exposure model: ``B_f = b · d_f``, isotropic, unit scale."""
        d = np.asarray(exposure_mid, np.float64).reshape(-1)
        z = np.zeros_like(d)
        return cls(b_per_exposure * d, z, z, np.ones_like(d))

    @classmethod
    def from_item(cls, item: Any) -> "FrameWeights | None":
        """The fitted weights stored in an item's grids (Warp's names and sign), or None."""
        g = item.grids.get("GridDoseBfacs")
        if g is None or not np.any(g.values) or g.values.size != item.n:
            return None

        def values(name: str, default: float) -> np.ndarray:
            h = item.grids.get(name)
            return np.full(item.n, default) if h is None or h.values.size != item.n else h.values.reshape(-1).astype(np.float64)

        return cls(-values("GridDoseBfacs", 0.0), -values("GridDoseBfacsDelta", 0.0), values("GridDoseBfacsAngle", 0.0),
                   values("GridDoseWeights", 1.0))

    @classmethod
    def for_item(cls, item: Any) -> "FrameWeights":
        """The item's fitted weights if it has them, else the exposure model."""
        return cls.from_item(item) or cls.exposure(item.exposure_mid)

    def to_grids(self) -> dict[str, Any]:
        """Warp/M's 1×1×F grids (their sign: negative B dampens)."""
        from ..model import CubicGrid

        f = len(self)
        return {
            "GridDoseBfacs": CubicGrid((1, 1, f), -self.bfactor, unit="angstrom2"),
            "GridDoseBfacsDelta": CubicGrid((1, 1, f), -self.delta, unit="angstrom2"),
            "GridDoseBfacsAngle": CubicGrid((1, 1, f), self.angle_deg, unit="degree"),
            "GridDoseWeights": CubicGrid((1, 1, f), self.scale, unit="1"),
        }

    def weights(self, box: int, pixel_size_angstrom: float, *, device=None) -> torch.Tensor:
        """(F, box, box // 2 + 1) weights on the rfft grid of a ``box``-pixel image."""
        ky, kx = freq_grid_2d(box, pixel_size_angstrom, device=device)
        k2 = kx * kx + ky * ky
        psi = torch.atan2(ky, kx)
        t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)[:, None, None]  # noqa: E731
        b = t(self.bfactor) + t(self.delta) * torch.cos(2 * (psi[None] - torch.deg2rad(t(self.angle_deg))))
        return t(self.scale) * torch.exp(-0.25 * b * k2[None])

    def crop_frequency(self, threshold: float = 0.25) -> np.ndarray:
        """(F,) frequency (1/Å) beyond which a frame's weight is below ``threshold`` in every
        direction (``inf`` where it never is)."""
        b = self.bfactor - np.abs(self.delta)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.log(np.maximum(self.scale, 1e-12) / threshold)
            k = np.where(b > 0, np.sqrt(np.maximum(4.0 * ratio, 0.0) / np.where(b > 0, b, 1.0)), np.inf)
        return np.where(self.scale < threshold, 0.0, k)

    def to_json(self) -> dict[str, Any]:
        return {"bfactor_a2": [round(float(v), 3) for v in self.bfactor],
                "delta_a2": [round(float(v), 3) for v in self.delta],
                "angle_deg": [round(float(v), 2) for v in self.angle_deg],
                "scale": [round(float(v), 4) for v in self.scale]}


@dataclass
class NccStats:
    """Sums over one species' particles in one or more series, per frame and (shell, sector) bin.

    ``num``, ``dd``, ``mm``: (F, S, A) sums of ``Re(d conj(m))``, ``|d|²``, ``|m|²``;
    ``k``: (S,) shell frequencies (1/Å); ``psi``: (A,) sector directions (radians);
    ``fsc``: (S,) the species' FSC at the shells (reliability of its references).
    """

    num: np.ndarray
    dd: np.ndarray
    mm: np.ndarray
    k: np.ndarray
    psi: np.ndarray
    fsc: np.ndarray

    def __iadd__(self, other: "NccStats") -> "NccStats":
        self.num = self.num + other.num
        self.dd = self.dd + other.dd
        self.mm = self.mm + other.mm
        return self


def bin_indices(box: int, pixel_size_angstrom: float, sectors: int, *, device=None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(b, b//2+1) bin index ``shell * sectors + sector`` (−1 outside 1 ≤ |k| < b/2) of an
    rfft grid, the shells' frequencies (1/Å) and the sectors' mid directions (radians)."""
    ky, kx = freq_grid_2d(box, None, device=device)
    r = torch.sqrt(kx * kx + ky * ky)
    shell = torch.round(r).long()
    psi = torch.remainder(torch.atan2(ky, kx), math.pi)  # directions modulo 180°
    sector = torch.clamp((psi / math.pi * sectors).long(), max=sectors - 1)
    n_shells = box // 2
    idx = shell * sectors + sector
    idx = torch.where((shell >= 1) & (shell < n_shells), idx, torch.full_like(idx, -1))
    k = np.arange(n_shells) / (box * pixel_size_angstrom)
    mids = (np.arange(sectors) + 0.5) * math.pi / sectors
    return idx, k, mids


def fit_frame_weights(stats: list[NccStats], *, anisotropic: bool = True, iterations: int = 200,
                      min_weight_sum: float = 1e-3) -> FrameWeights:
    """Fit per-frame weights to the NCC statistics of one or more species (module docstring).

    Raises :class:`~mrepo.errors.DegenerateResult` when the statistics carry no signal
    (every species' FSC is zero, or nothing was correlated).
    """
    if not stats:
        raise InvalidInput("no statistics to fit frame weights to")
    f = stats[0].num.shape[0]
    obs, wts, k2s, psis, sp_shell = [], [], [], [], []
    offset = 0  # (species, shell) pairs are numbered one species after the other
    for st in stats:
        if st.num.shape[0] != f:
            raise InvalidInput("statistics of different frame counts")
        with np.errstate(divide="ignore", invalid="ignore"):
            ncc = st.num / np.sqrt(st.dd * st.mm)
        ok = np.isfinite(ncc) & (st.dd > 0) & (st.mm > 0)
        w = np.clip(np.asarray(st.fsc, np.float64), 0.0, 1.0)[None, :, None] * ok
        obs.append(np.where(ok, ncc, 0.0))
        wts.append(w)
        k2s.append(np.broadcast_to((np.asarray(st.k) ** 2)[None, :, None], ncc.shape))
        psis.append(np.broadcast_to(np.asarray(st.psi)[None, None, :], ncc.shape))
        sp_shell.append(np.broadcast_to((offset + np.arange(ncc.shape[1]))[None, :, None], ncc.shape))
        offset += ncc.shape[1]
    o = torch.as_tensor(np.concatenate([a.reshape(f, -1) for a in obs], 1), dtype=torch.float64)
    c = torch.as_tensor(np.concatenate([a.reshape(f, -1) for a in wts], 1), dtype=torch.float64)
    k2 = torch.as_tensor(np.concatenate([a.reshape(f, -1) for a in k2s], 1), dtype=torch.float64)
    psi = torch.as_tensor(np.concatenate([a.reshape(f, -1) for a in psis], 1), dtype=torch.float64)
    shell = torch.as_tensor(np.concatenate([a.reshape(f, -1) for a in sp_shell], 1)[0], dtype=torch.long)
    if float(c.sum()) < min_weight_sum:
        raise DegenerateResult("no signal to fit frame weights to (every FSC is zero)")
    n_shells = int(shell.max()) + 1
    # A per (species, shell) from the mean observed NCC; frames start at B = 0, scale 1
    with torch.no_grad():
        a0 = torch.zeros(n_shells, dtype=torch.float64).index_add_(0, shell, (c * o).sum(0))
        a0 = a0 / torch.zeros(n_shells, dtype=torch.float64).index_add_(0, shell, c.sum(0)).clamp(min=1e-12)
    log_a = torch.log(a0.clamp(min=1e-4)).clone().requires_grad_(True)
    log_s = torch.zeros(f, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(f, dtype=torch.float64, requires_grad=True)
    bc = torch.zeros(f, dtype=torch.float64, requires_grad=anisotropic)
    bs = torch.zeros(f, dtype=torch.float64, requires_grad=anisotropic)
    params = [log_a, log_s, b] + ([bc, bs] if anisotropic else [])
    cos2, sin2 = torch.cos(2 * psi), torch.sin(2 * psi)
    norm = float(c.sum())
    unit = 100.0  # B-factors in units of 100 Å²: the variables are O(1), which L-BFGS needs

    def model() -> torch.Tensor:
        bb = (b[:, None] + bc[:, None] * cos2 + bs[:, None] * sin2) * unit
        return torch.exp(log_a[shell][None, :] + log_s[:, None] - 0.25 * bb * k2)

    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (c * (o - model()) ** 2).sum() / norm
        loss.backward()
        return loss

    for _ in range(5):  # restarts: L-BFGS stops early on flat stretches of this fit
        opt.step(closure)
    bf = b.detach().numpy() * unit
    dc, ds = bc.detach().numpy() * unit, bs.detach().numpy() * unit
    delta = np.hypot(dc, ds)
    angle = np.degrees(0.5 * np.arctan2(ds, dc)) % 180.0
    scale = np.exp(log_s.detach().numpy())
    if not (np.all(np.isfinite(bf)) and np.all(np.isfinite(scale))):
        raise DegenerateResult("frame weight fit did not converge")
    return FrameWeights(bf - bf.min(), delta, angle, scale / scale.max())


def plot_frame_weights(weights: FrameWeights, path: str | Path, *, title: str = "") -> Path:
    """PNG of the fitted weights per frame: B-factor (isotropic and along/across the
    anisotropy axis), the axis, and the scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = np.arange(len(weights))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    ax = axes[0]
    ax.plot(f, weights.bfactor, "-o", ms=3, label="B (isotropic part)")
    ax.plot(f, weights.bfactor + weights.delta, "--", label="B along the axis")
    ax.plot(f, weights.bfactor - weights.delta, ":", label="B across the axis")
    ax.set_xlabel("frame")
    ax.set_ylabel("B-factor (Å², relative)")
    ax.legend(fontsize="small")
    axes[1].plot(f, weights.angle_deg, "o", ms=3)
    axes[1].set_ylim(0, 180)
    axes[1].set_xlabel("frame")
    axes[1].set_ylabel("anisotropy axis (° from x)")
    axes[2].plot(f, weights.scale, "-o", ms=3)
    axes[2].set_xlabel("frame")
    axes[2].set_ylabel("scale")
    fig.suptitle(title or "fitted exposure weights per frame")
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p)
    plt.close(fig)
    return p
