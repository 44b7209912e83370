"""The ground truth of a simulated population, kept outside the repository.

Files under ``OUT_DIR/truth/`` (the repository keeps its data in
``OUT_DIR/.git`` and ``.mrepo``: it has no working tree and tracks none of them):

* ``truth.json`` — preset, seed, configuration, contrast, per-item true
  models (imaging incl. beam tilt and magnification matrix, exposures, tilt
  geometry, the intra-frame blur, the metadata of the true item grids) and file names;
* ``particles_<species>.npz`` — true coordinate and Euler trajectories
  (rows in the same order as the stored particles), half sets, item digests;
* ``items.npz`` — true motion pyramids and item grids (``GridCTFDoming``, µm) of
  frame series, and per-tilt angle errors, image-warp grids and defocus (tilt series);
* ``maps/<species>.mrc`` — the true maps (and ``maps/<species>_atoms.npz``,
  the pseudo-atoms); for a species with a flexible domain (:mod:`mrepo.sim.flexible`)
  the true map is the mean over its particles' conformations, and
  ``maps/<species>_flexible.npz`` holds the conformation maps, the rest map, the core and
  domain masks, the domain's atoms and motion, and each particle's conformation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CorruptObject, NotFound
from ..io.mrc import read_mrc, write_mrc
from ..model import CubicGrid, ImagingModel, Item, Particles
from ..refine.deformation import MotionPyramid
from ..store.atomic import atomic_write
from .config import SimConfig, SpeciesSpec
from .flexible import FlexibleTruth
from .render import TiltGeometry

__all__ = ["ItemTruth", "Truth", "load_truth", "save_truth", "truth_population", "TRUTH_DIR"]

TRUTH_DIR = "truth"
FORMAT = {"format": "mrepo-sim-truth", "version": 1}

#: SimConfig fields added after the first truth folders were written: a folder without them was
#: simulated without these effects (their defaults are not 0).
_LATER_CONFIG_FIELDS = ("mag_anisotropy", "doming_angstrom", "blur_frames", "blur_angstrom")


@dataclass
class ItemTruth:
    """True models of one item.

    Attributes
    ----------
    source: data source name (``movies`` or ``tiltseries``).
    item: the item with its **true** imaging model (defocus, astigmatism, beam tilt,
        magnification matrix), exposures and (tilt series) true tilt angles, axis and per-tilt
        offsets; its grids hold only the true ``GridCTFDoming`` (frame series, µm; the motion is
        ``motion``), and ``item.extra["blur"]`` the same dict as ``blur`` (so that
        :func:`mrepo.sim.render_frames` of the item reproduces the data).
    motion: (values_x, values_y) grid pairs (Z, Y, X), Å: the true motion pyramid
        (frame series; level 0 is the global drift, one node per frame).
    tilt: true per-tilt stage-angle errors, image warp and defocus (tilt series).
    electrons_per_pixel: (n,) mean electrons per pixel of each frame or tilt (``D``).
    blur: anisotropic intra-frame motion blur of a frame series, ``{"angle_deg": φ,
        "sigma_angstrom": [σ_f per frame]}`` (Fourier factor ``exp(−2π² σ_f² (k·u)²)``,
        u = (cos φ, sin φ), k in 1/Å); None for none.
    """

    source: str
    item: Item
    motion: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    tilt: TiltGeometry | None = None
    electrons_per_pixel: np.ndarray | None = None
    blur: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.blur is None:
            self.blur = (self.item.extra or {}).get("blur") or None
        elif self.blur:
            self.item.extra = {**(self.item.extra or {}), "blur": self.blur}

    @property
    def doming(self) -> CubicGrid | None:
        """The true ``GridCTFDoming`` (µm), or None."""
        return self.item.grids.get("GridCTFDoming") if self.item.grids else None

    @property
    def name(self) -> str:
        return self.item.name

    @property
    def digest(self) -> str:
        return self.item.data_digest

    def pyramid(self) -> MotionPyramid:
        """The true motion as a :class:`~mrepo.refine.deformation.MotionPyramid` (float64 tensors)."""
        return MotionPyramid([(torch.as_tensor(gx, dtype=torch.float64), torch.as_tensor(gy, dtype=torch.float64))
                              for gx, gy in self.motion])


@dataclass
class Truth:
    """Everything the simulator knows and the repository does not.

    Attributes
    ----------
    path: the ``truth`` directory.
    preset, seed, config: what built it.
    contrast: ``c`` in the expected counts ``D (1 + c r)``.
    maps: species -> true map (box³, z y x, float32), pixel size ``config.pixel_size_angstrom``.
    species: species -> its :class:`~mrepo.sim.config.SpeciesSpec`.
    boxes: species -> map box (px).
    particles: species -> true particles (coordinate and Euler trajectories), row i
        matching row i of the stored species' particles.
    items: item name -> :class:`ItemTruth`.
    snr: measured per-particle SNR over all frames (tilts) by source and species.
    summary: what the commit metadata also records.
    flexible: species -> its flexible domain (:class:`~mrepo.sim.flexible.FlexibleTruth`:
        per-particle conformations, conformation and rest maps, core and domain masks); empty
        when no species has one. ``maps`` then holds the mean over the particles' conformations.
    """

    path: Path | None
    preset: str
    seed: int
    config: SimConfig
    contrast: float
    maps: dict[str, np.ndarray]
    species: dict[str, SpeciesSpec]
    boxes: dict[str, int]
    particles: dict[str, Particles]
    items: dict[str, ItemTruth]
    snr: dict[str, dict[str, float]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    flexible: dict[str, FlexibleTruth] = field(default_factory=dict)

    @property
    def pixel_size_angstrom(self) -> float:
        return float(self.config.pixel_size_angstrom)

    def item(self, name: str) -> Item:
        """The item with its true imaging model (see :class:`ItemTruth`)."""
        return self._item(name).item

    def _item(self, name: str) -> ItemTruth:
        if name not in self.items:
            raise NotFound("no such item in the simulation", name)
        return self.items[name]

    def motion(self, name: str) -> MotionPyramid:
        """True motion pyramid of a frame series."""
        return self._item(name).pyramid()

    def tilt_geometry(self, name: str) -> TiltGeometry | None:
        return self._item(name).tilt

    def item_by_digest(self, digest: str) -> ItemTruth:
        for it in self.items.values():
            if it.digest == digest:
                return it
        raise NotFound("no simulated item with this data digest", digest)

    def particles_in_item(self, name: str) -> dict[str, Particles]:
        """Species -> true particles of one item (rows of that item only, in table order)."""
        dig = self._item(name).digest
        out = {}
        for sp, p in self.particles.items():
            idx = p.in_item(dig)
            if len(idx):
                out[sp] = p.select(np.isin(np.arange(len(p)), idx))
        return out

    def rows_in_item(self, name: str) -> dict[str, np.ndarray]:
        """Species -> indices of the item's particles in the species' tables."""
        dig = self._item(name).digest
        return {sp: p.in_item(dig) for sp, p in self.particles.items() if len(p.in_item(dig))}


# ---------------------------------------------------------------------------- files
def _arr(a) -> list | None:
    return None if a is None else np.asarray(a).tolist()


def save_truth(truth: Truth, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``truth`` under ``out_dir/truth`` (see the module docstring); returns that directory."""
    d = Path(out_dir) / TRUTH_DIR
    (d / "maps").mkdir(parents=True, exist_ok=True)
    px = truth.pixel_size_angstrom
    species_doc = {}
    for name, m in truth.maps.items():
        write_mrc(d / "maps" / f"{name}.mrc", m, px, label=f"mrepo sim true map {name}")
        species_doc[name] = {"map": f"maps/{name}.mrc", "box": truth.boxes[name],
                             "spec": {k: getattr(truth.species[name], k) for k in SpeciesSpec.__dataclass_fields__}}
    for name, p in truth.particles.items():
        p = p.load()
        np.savez(d / f"particles_{name}.npz", items=np.asarray(p.items, dtype=str), item=p.item,
                 coordinates=p.coordinates, angles=p.angles, half_set=p.half_set)
        species_doc[name]["particles"] = f"particles_{name}.npz"
    for name, fl in truth.flexible.items():
        fname = f"maps/{name}_flexible.npz"
        np.savez_compressed(d / fname, maps=fl.maps, rest_map=fl.rest_map, core_mask=fl.core_mask,
                            domain_mask=fl.domain_mask, domain_atoms=fl.domain_atoms, direction=fl.direction,
                            pivot=fl.pivot, rotvecs=fl.rotvecs, conformation=np.asarray(fl.conformation, np.int64))
        species_doc[name]["flexible"] = {"file": fname, "fraction": fl.fraction, "rms_angstrom": fl.rms_angstrom,
                                         "measured_rms_angstrom": fl.measured_rms_angstrom,
                                         "conformations": fl.n_conformations}
    grids: dict[str, np.ndarray] = {}
    items_doc = {}
    for name, it in truth.items.items():
        item = it.item
        items_doc[name] = {
            "source": it.source,
            "kind": item.kind,
            "data_digest": item.data_digest,
            "shape": list(item.shape),
            "imaging": item.imaging.to_json(),
            "pre_exposure": _arr(item.pre_exposure),
            "dose": _arr(item.dose),
            "tilt_angles_deg": _arr(item.tilt_angles_deg),
            "tilt_axis_deg": _arr(item.tilt_axis_deg),
            "tilt_axis_offset_angstrom": _arr(item.tilt_axis_offset_angstrom),
            "electrons_per_pixel": _arr(it.electrons_per_pixel),
            "motion_levels": len(it.motion),
            "tilt": None if it.tilt is None else {"warp": it.tilt.warp is not None},
            "grids": {g: grid.to_meta() for g, grid in sorted(item.grids.items())},
            "blur": it.blur,
        }
        for g, grid in item.grids.items():
            grids[f"{name}/grids/{g}"] = np.asarray(grid.values)
        for k, (gx, gy) in enumerate(it.motion):
            grids[f"{name}/motion/{k}/x"] = np.asarray(gx)
            grids[f"{name}/motion/{k}/y"] = np.asarray(gy)
        if it.tilt is not None:
            grids[f"{name}/tilt/angle_errors_deg"] = np.asarray(it.tilt.angle_errors_deg)
            grids[f"{name}/tilt/defocus_angstrom"] = np.asarray(it.tilt.defocus_angstrom)
            if it.tilt.warp is not None:
                grids[f"{name}/tilt/warp_x"] = np.asarray(it.tilt.warp[0])
                grids[f"{name}/tilt/warp_y"] = np.asarray(it.tilt.warp[1])
    np.savez(d / "items.npz", **grids)
    doc = {
        **FORMAT,
        "preset": truth.preset,
        "seed": truth.seed,
        "config": truth.config.to_json(),
        "contrast": truth.contrast,
        "species": species_doc,
        "items": items_doc,
        "snr": truth.snr,
        "summary": truth.summary,
        "conventions": "docs/simulation.md",
    }
    atomic_write(d / "truth.json", (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    truth.path = d
    return d


def load_truth(out_dir: str | os.PathLike[str]) -> Truth:
    """The ground truth of the simulation in ``out_dir`` (the ``mrepo sim`` output folder or its ``truth``)."""
    base = Path(out_dir)
    d = base if (base / "truth.json").exists() else base / TRUTH_DIR
    f = d / "truth.json"
    if not f.exists():
        raise NotFound("no simulation ground truth here (truth/truth.json)", str(base))
    try:
        doc = json.loads(f.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptObject(f"not valid JSON: {e}", str(f)) from None
    if doc.get("format") != FORMAT["format"] or doc.get("version", 0) > FORMAT["version"]:
        raise CorruptObject("not a simulation truth of a supported version", str(f))
    cfg_doc = dict(doc["config"])
    for k in _LATER_CONFIG_FIELDS:
        cfg_doc.setdefault(k, 0)
    cfg = SimConfig.from_json(cfg_doc)
    maps, species, boxes, particles = {}, {}, {}, {}
    flexible: dict[str, FlexibleTruth] = {}
    try:
        for name, sd in doc["species"].items():
            maps[name] = np.array(read_mrc(d / sd["map"], mmap=False).data, dtype=np.float32)
            species[name] = SpeciesSpec(**sd["spec"])
            boxes[name] = int(sd["box"])
            with np.load(d / sd["particles"]) as z:
                particles[name] = Particles([str(x) for x in z["items"]], z["item"], z["coordinates"], z["angles"],
                                            z["half_set"])
            fd = sd.get("flexible")
            if fd:
                with np.load(d / fd["file"]) as z:
                    flexible[name] = FlexibleTruth(
                        name, float(fd["fraction"]), float(fd["rms_angstrom"]), float(fd["measured_rms_angstrom"]),
                        z["domain_atoms"], z["direction"], z["pivot"], z["rotvecs"], z["maps"], z["rest_map"],
                        z["core_mask"], z["domain_mask"], z["conformation"])
        items = {}
        with np.load(d / "items.npz") as g:
            grids = {k: g[k] for k in g.files}
        for name, it in doc["items"].items():
            item = Item(
                name=name,
                kind=it["kind"],
                data_digest=it["data_digest"],
                shape=tuple(it["shape"]),
                imaging=ImagingModel.from_json(it["imaging"]),
                pre_exposure=np.asarray(it["pre_exposure"]),
                dose=np.asarray(it["dose"]),
                tilt_angles_deg=None if it["tilt_angles_deg"] is None else np.asarray(it["tilt_angles_deg"]),
                tilt_axis_deg=None if it["tilt_axis_deg"] is None else np.asarray(it["tilt_axis_deg"]),
                tilt_axis_offset_angstrom=None if it["tilt_axis_offset_angstrom"] is None
                else np.asarray(it["tilt_axis_offset_angstrom"]),
            )
            motion = [(grids[f"{name}/motion/{k}/x"], grids[f"{name}/motion/{k}/y"]) for k in range(it["motion_levels"])]
            tilt = None
            if it.get("tilt") is not None:
                warp = (grids[f"{name}/tilt/warp_x"], grids[f"{name}/tilt/warp_y"]) if it["tilt"]["warp"] else None
                tilt = TiltGeometry(grids[f"{name}/tilt/angle_errors_deg"], warp, grids[f"{name}/tilt/defocus_angstrom"])
            for g, meta in (it.get("grids") or {}).items():
                item.grids[g] = CubicGrid(tuple(meta["dims"]), grids[f"{name}/grids/{g}"],
                                          margins=tuple(meta.get("margins", (0.0, 0.0, 0.0))),
                                          unit=meta.get("unit", "angstrom"), extra=meta.get("extra", {}))
            epp = it.get("electrons_per_pixel")
            items[name] = ItemTruth(it["source"], item, motion, tilt, None if epp is None else np.asarray(epp),
                                    blur=it.get("blur") or None)
    except (KeyError, OSError, ValueError) as e:
        raise CorruptObject(f"simulation truth is incomplete or damaged: {e}", str(d)) from None
    return Truth(d, doc["preset"], int(doc["seed"]), cfg, float(doc["contrast"]), maps, species, boxes, particles,
                 items, doc.get("snr", {}), doc.get("summary", {}), flexible)



def truth_population(pop: Any, truth: Truth) -> Any:
    """A copy of ``pop`` whose frame-series items and particles carry the TRUE
    parameters (motion as ``PyramidShiftX/Y_<level>`` grids, poses, CTF: defocus,
    astigmatism, beam tilt and magnification matrix through the imaging model, and the true
    ``GridCTFDoming``): reconstructing it gives the "oracle" maps a perfect refinement would
    reach. (The intra-frame blur of the first frames is no parameter of the item model; it is in
    ``truth.items[name].blur``.)"""
    import copy

    from ..model import MOTION_GRID_PAIRS, CubicGrid, pyramid_grid_names

    out = copy.deepcopy(pop)
    for name, p in truth.particles.items():
        if name in out.species:
            out.species[name].particles = p
    for _src, it in out.items():
        if it.kind != "frames" or it.name not in truth.items:
            continue
        t = truth.items[it.name]
        motion = {n for pair in MOTION_GRID_PAIRS for n in pair}
        for k in list(it.grids):
            if k in motion or k.startswith("PyramidShift"):
                del it.grids[k]
        for level, (gx, gy) in enumerate(t.motion):
            dims = (gx.shape[2], gx.shape[1], gx.shape[0])
            nx, ny = pyramid_grid_names(level)
            it.grids[nx] = CubicGrid(dims, gx)
            it.grids[ny] = CubicGrid(dims, gy)
        it.imaging = t.item.imaging
        it.grids.pop("GridCTFDoming", None)
        if t.doming is not None:
            d = t.doming
            it.grids["GridCTFDoming"] = CubicGrid(d.dims, d.values.copy(), margins=d.margins, unit=d.unit)
    return out
