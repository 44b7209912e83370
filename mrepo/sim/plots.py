"""Pictures of a simulated population: a frame with particle outlines, and the motion field."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInput, NotFound
from ..refine.deformation import normalised_time
from .geometry import eval_grid_pairs, frame_positions
from .truth import Truth, load_truth

__all__ = ["plot_frame", "plot_motion"]

_COLOURS = ("tab:orange", "tab:cyan", "tab:pink", "tab:green", "tab:red")


def _figure(w: float, h: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110)


def _raw(out_dir: Path, truth: Truth, item: str) -> np.ndarray:
    from ..repository import open_repo

    repo = open_repo(out_dir, search_parents=False)
    pop = repo.population("HEAD")
    for _src, it in pop.items():
        if it.name == item and it.raw_array:
            return np.asarray(repo.open_array("HEAD", it.raw_array)[...])
    raise NotFound("no raw data for this item in the repository", item)


def plot_frame(out_dir: str | os.PathLike[str], item: str, path_png: str | os.PathLike[str], *,
               truth: Truth | None = None, raw: np.ndarray | None = None, lowpass_px: float = 1.5) -> Path:
    """PNG of a frame series: the sum of its frames (low-pass filtered for the eye) with each
    particle's outline (its diameter, at its true mid-exposure position), coloured by species.

    ``out_dir`` is the simulation folder; ``truth`` and ``raw`` may be given to avoid reading them.
    """
    from scipy import ndimage

    out = Path(out_dir)
    truth = truth or load_truth(out)
    it = truth.items.get(item)
    if it is None:
        raise NotFound("no such item in the simulation", item)
    if it.item.kind != "frames":
        raise InvalidInput("plot_frame shows frame series", item)
    stack = _raw(out, truth, item) if raw is None else raw
    img = np.asarray(stack, np.float64).sum(axis=0)
    img = ndimage.gaussian_filter(img - img.mean(), lowpass_px)
    px = truth.pixel_size_angstrom
    fig = _figure(7.5, 7.0)
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = np.percentile(img, [1, 99])
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="upper")
    from matplotlib.patches import Circle

    handles = []
    for k, (sp, parts) in enumerate(truth.particles_in_item(item).items()):
        colour = _COLOURS[k % len(_COLOURS)]
        pos = frame_positions(np.asarray(parts.coordinates), it.item.n, it.item.shape, px, it.motion)
        mid = pos[:, pos.shape[1] // 2, :] / px
        r = 0.5 * truth.species[sp].diameter_angstrom / px
        for x, y in mid:
            ax.add_patch(Circle((x, y), r, fill=False, edgecolor=colour, linewidth=1.2))
        handles.append(Circle((0, 0), 1, fill=False, edgecolor=colour, label=f"{sp} ({len(mid)})"))
    ax.legend(handles=handles, loc="upper right", fontsize="small")
    ax.set_title(f"{item}: sum of {it.item.n} frames, {px:g} Å/px (true positions, mid-exposure)")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_motion(out_dir: str | os.PathLike[str], item: str, path_png: str | os.PathLike[str], *,
                truth: Truth | None = None, grid: int = 12) -> Path:
    """PNG of the true motion of a frame series: left, the global drift path (level 0) over the
    exposure; right, the local motion (pyramid minus its mean over the view) from the first to
    the last frame as arrows on a grid, magnified for visibility."""
    out = Path(out_dir)
    truth = truth or load_truth(out)
    it = truth.items.get(item)
    if it is None or it.item.kind != "frames":
        raise InvalidInput("plot_motion shows frame series", item)
    f = it.item.n
    h, w = it.item.shape[1:]
    t = normalised_time(f, dtype=torch.float64).numpy()
    fig = _figure(12.0, 5.6)
    ax1 = fig.add_subplot(1, 2, 1)
    glob = -eval_grid_pairs(it.motion[:1], np.full(f, 0.5), np.full(f, 0.5), t)  # displacement: minus the grid (Warp's sign)
    ax1.plot(glob[:, 0], glob[:, 1], "-o", markersize=3)
    ax1.plot(glob[0, 0], glob[0, 1], "s", color="tab:green", label="first frame")
    ax1.plot(glob[-1, 0], glob[-1, 1], "s", color="tab:red", label="last frame")
    ax1.set_aspect("equal", adjustable="datalim")
    ax1.set_xlabel("x shift (Å)")
    ax1.set_ylabel("y shift (Å)")
    ax1.invert_yaxis()
    ax1.legend(fontsize="small")
    ax1.set_title("global drift (pyramid level 0)")
    ax2 = fig.add_subplot(1, 2, 2)
    g = np.linspace(0, 1, grid)
    gy, gx = np.meshgrid(g, g, indexing="ij")
    xs, ys = gx.reshape(-1), gy.reshape(-1)
    m = len(xs)
    local = it.motion[1:]
    if local:
        d0 = eval_grid_pairs(local, xs, ys, np.zeros(m))
        d1 = eval_grid_pairs(local, xs, ys, np.ones(m))
        d = d0 - d1  # displacement from the first to the last frame: minus the grids' change
        d -= d.mean(axis=0)
    else:
        d = np.zeros((m, 2))
    rms = float(np.sqrt((d**2).sum(1).mean()))
    ax2.quiver(xs * (w - 1), ys * (h - 1), d[:, 0], d[:, 1], angles="xy", scale_units="xy",
               scale=max(rms, 1e-9) / (0.5 * w / grid), color="tab:blue")
    ax2.set_xlim(-0.05 * w, 1.05 * w)
    ax2.set_ylim(1.05 * h, -0.05 * h)
    ax2.set_aspect("equal")
    ax2.set_xlabel("x (px)")
    ax2.set_ylabel("y (px)")
    ax2.set_title(f"local motion, first to last frame (RMS {rms:.2f} Å, arrows magnified)")
    fig.suptitle(f"{item}: true motion ({len(it.motion)} pyramid levels)")
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
