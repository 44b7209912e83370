"""The imaging model of an item: CTF and optics (RELION/Warp conventions, Å)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ImagingModel"]


@dataclass
class ImagingModel:
    """CTF and optics of one series.

    Defocus is positive for underfocus. Astigmatism follows Warp: the defocus
    along the major axis is ``defocus + astigmatism`` (RELION's DefocusU), along
    the minor axis ``defocus - astigmatism`` (DefocusV), the major axis at
    ``astigmatism_angle_deg`` from x.
    """

    pixel_size_angstrom: float
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    defocus_angstrom: float = 15000.0
    astigmatism_angstrom: float = 0.0
    astigmatism_angle_deg: float = 0.0
    phase_shift_deg: float = 0.0
    bfactor_a2: float = 0.0
    scale: float = 1.0
    beam_tilt_mrad: tuple[float, float] = (0.0, 0.0)
    mag_matrix: tuple[tuple[float, float], tuple[float, float]] = ((1.0, 0.0), (0.0, 1.0))
    odd_zernike: tuple[float, ...] = ()
    even_zernike: tuple[float, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Plain floats, so that 300 and 300.0 (or numpy scalars) give the same
        # canonical JSON and hence the same item digest (mrepo.model.provenance).
        for name in ("pixel_size_angstrom", "voltage_kv", "cs_mm", "amplitude_contrast", "defocus_angstrom",
                     "astigmatism_angstrom", "astigmatism_angle_deg", "phase_shift_deg", "bfactor_a2", "scale"):
            setattr(self, name, float(getattr(self, name)))
        self.beam_tilt_mrad = tuple(float(v) for v in self.beam_tilt_mrad)  # type: ignore[assignment]
        self.mag_matrix = tuple(tuple(float(v) for v in r) for r in self.mag_matrix)  # type: ignore[assignment]
        self.odd_zernike = tuple(float(v) for v in self.odd_zernike)
        self.even_zernike = tuple(float(v) for v in self.even_zernike)

    @property
    def defocus_u_angstrom(self) -> float:
        return self.defocus_angstrom + self.astigmatism_angstrom

    @property
    def defocus_v_angstrom(self) -> float:
        return self.defocus_angstrom - self.astigmatism_angstrom

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["beam_tilt_mrad"] = list(self.beam_tilt_mrad)
        d["mag_matrix"] = [list(r) for r in self.mag_matrix]
        d["odd_zernike"] = list(self.odd_zernike)
        d["even_zernike"] = list(self.even_zernike)
        if not self.extra:
            d.pop("extra")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ImagingModel":
        d = dict(d)
        d["beam_tilt_mrad"] = tuple(d.get("beam_tilt_mrad", (0.0, 0.0)))
        d["mag_matrix"] = tuple(tuple(r) for r in d.get("mag_matrix", ((1.0, 0.0), (0.0, 1.0))))
        d["odd_zernike"] = tuple(d.get("odd_zernike", ()))
        d["even_zernike"] = tuple(d.get("even_zernike", ()))
        d.setdefault("extra", {})
        known = set(cls.__dataclass_fields__)
        extra = {k: v for k, v in d.items() if k not in known}
        d = {k: v for k, v in d.items() if k in known}
        d["extra"] = {**d["extra"], **extra}
        return cls(**d)
