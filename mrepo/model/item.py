"""An item: one frame series (movie) or tilt series with its models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInput
from .grids import CubicGrid
from .imaging import ImagingModel

__all__ = ["Item", "ITEM_KINDS", "defocus_at"]

ITEM_KINDS = ("frames", "tilts")


def _opt(a: Any, dtype: Any = np.float32) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=dtype)


@dataclass(eq=False)
class Item:
    """One series of a data source.

    Attributes
    ----------
    name:
        Root name (e.g. ``movie_0001`` or ``TS_01``); unique within its source.
    kind:
        ``"frames"`` (frame series, single-particle) or ``"tilts"`` (tilt series).
    data_digest:
        Content digest of the raw data (:func:`~mrepo.model.digests.array_content_digest`):
        the item's identity. Particles refer to items by it.
    shape:
        Raw data shape (n frames or tilts, y px, x px).
    imaging:
        CTF and optics.
    pre_exposure:
        (n,) accumulated exposure in e⁻/Å² before each frame/tilt.
    dose:
        (n,) exposure of each frame/tilt in e⁻/Å².
    tilt_angles_deg, tilt_axis_deg:
        (n,) stage tilt and tilt-axis angles (tilt series only).
    tilt_axis_offset_angstrom:
        (n, 2) x/y offsets of the tilt axis (tilt series only).
    use:
        (n,) bool: frames/tilts used in refinement.
    grids:
        Deformation and per-frame models by name (Warp names such as
        ``GridMovementX``, ``GridCTF``, ``GridCTFDoming``; mrepo's refined motion
        pyramid as M's ``PyramidShiftX/Y_i``).
    refined_with:
        species name -> species digest of the references this item was refined against.
    m_hash:
        M's item data hash (SHA-1 hex) when imported from Warp/M.
    raw_array:
        Name of the raw data array in the repository (None when not stored).
    """

    name: str
    kind: str
    data_digest: str
    shape: tuple[int, int, int]
    imaging: ImagingModel
    pre_exposure: np.ndarray
    dose: np.ndarray
    tilt_angles_deg: np.ndarray | None = None
    tilt_axis_deg: np.ndarray | None = None
    tilt_axis_offset_angstrom: np.ndarray | None = None
    use: np.ndarray | None = None
    grids: dict[str, CubicGrid] = field(default_factory=dict)
    refined_with: dict[str, str] = field(default_factory=dict)
    m_hash: str | None = None
    raw_array: str | None = None
    source_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ITEM_KINDS:
            raise InvalidInput(f"item kind must be one of {ITEM_KINDS}, got {self.kind!r}", self.name)
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        n = self.shape[0]
        self.pre_exposure = np.asarray(self.pre_exposure, np.float64).reshape(-1)
        self.dose = np.asarray(self.dose, np.float64).reshape(-1)
        for name in ("pre_exposure", "dose"):
            if getattr(self, name).shape != (n,):
                raise InvalidInput(f"{name} needs one value per frame/tilt ({n}), got {getattr(self, name).shape[0]}", self.name)
        self.tilt_angles_deg = _opt(self.tilt_angles_deg, np.float64)
        self.tilt_axis_deg = _opt(self.tilt_axis_deg, np.float64)
        self.tilt_axis_offset_angstrom = _opt(self.tilt_axis_offset_angstrom, np.float64)
        self.use = np.ones(n, bool) if self.use is None else np.asarray(self.use, bool)
        if self.kind == "tilts" and (self.tilt_angles_deg is None or self.tilt_angles_deg.shape != (n,)):
            raise InvalidInput("a tilt series needs one tilt angle per tilt", self.name)

    @property
    def n(self) -> int:
        """Number of frames or tilts."""
        return self.shape[0]

    @property
    def exposure_mid(self) -> np.ndarray:
        """(n,) accumulated exposure at the middle of each frame/tilt, e⁻/Å²."""
        return self.pre_exposure + 0.5 * self.dose


def _grid_or(item: "Item", name: str, x: np.ndarray, y: np.ndarray, t: np.ndarray, default: float, scale: float) -> np.ndarray:
    g = item.grids.get(name)
    if g is None or not np.any(g.values):
        return np.full(np.broadcast(x, y, t).shape, float(default))
    b = np.broadcast(x, y, t)
    xb, yb, tb = (np.broadcast_to(a, b.shape).reshape(-1) for a in (x, y, t))
    return (g.evaluate(xb, yb, tb) * scale).reshape(b.shape)


def defocus_at(item: "Item", x: Any, y: Any, t: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Defocus U, V (Å) and astigmatism angle (degrees) of the item at normalised positions
    and times (broadcast together), before a particle's own offset (its z).

    As Warp does (``Movie.GetCTFsForOneParticle``): the defocus is ``GridCTF`` (µm) where
    that grid holds values, else the imaging model's; plus ``GridCTFDoming`` (µm, defocus
    change over position and exposure); the astigmatism is ``GridCTFDefocusDelta`` (µm,
    U − V) and ``GridCTFDefocusAngle`` where they hold values, else the imaging model's.
    """
    x, y, t = (np.asarray(a, np.float64) for a in (x, y, t))
    im = item.imaging
    d = _grid_or(item, "GridCTF", x, y, t, im.defocus_angstrom, 1e4)
    if "GridCTFDoming" in item.grids:
        d = d + _grid_or(item, "GridCTFDoming", x, y, t, 0.0, 1e4)
    half = _grid_or(item, "GridCTFDefocusDelta", x, y, t, 2 * im.astigmatism_angstrom, 1e4) / 2
    angle = _grid_or(item, "GridCTFDefocusAngle", x, y, t, im.astigmatism_angle_deg, 1.0)
    return d + half, d - half, angle
