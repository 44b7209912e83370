"""Provenance digests: what each object's digest covers (M's hash semantics).

- An **item**'s digest covers its raw data digest, its deformation and
  imaging models (every field, grid values by content digest) and the
  digests of the species used to refine it (``refined_with``).
- A **species**' digest covers its maps (half-maps, mask, denoised maps, by
  content digest), its denoiser weights, its particles (every column by
  content digest, and the item digests they refer to), its own parameters
  (diameter, sampling, box, symmetry) and the provenance digests of the items
  that contributed to it.

All are BLAKE3 of canonical JSON (:mod:`mrepo.model.digests`), so the same
content gives the same digest on any machine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .digests import array_content_digest, json_digest
from .item import Item
from .particles import Particles
from .species import Species

__all__ = ["item_model_json", "item_digest", "particles_digest", "species_digest"]


def _list(a: np.ndarray | None) -> list | None:
    return None if a is None else np.asarray(a).tolist()


def item_model_json(item: Item) -> dict[str, Any]:
    """The deformation and imaging model of an item as canonical-JSON-ready data."""
    return {
        "kind": item.kind,
        "shape": list(item.shape),
        "imaging": item.imaging.to_json(),
        "pre_exposure": _list(item.pre_exposure),
        "dose": _list(item.dose),
        "tilt_angles_deg": _list(item.tilt_angles_deg),
        "tilt_axis_deg": _list(item.tilt_axis_deg),
        "tilt_axis_offset_angstrom": _list(item.tilt_axis_offset_angstrom),
        "use": _list(item.use),
        "grids": {
            name: {**g.to_meta(), "values": array_content_digest(g.values)} for name, g in sorted(item.grids.items())
        },
    }


def item_digest(item: Item) -> str:
    return json_digest(
        {
            "data": item.data_digest,
            "model": item_model_json(item),
            "refined_with": sorted([k, v] for k, v in item.refined_with.items()),
        }
    )


def particles_digest(p: Particles) -> str:
    return json_digest(
        {"items": list(p.items), "columns": {k: array_content_digest(v) for k, v in sorted(p.columns().items())}}
    )


def species_digest(sp: Species, array_digest: Callable[[str], str]) -> str:
    """``array_digest(name)`` gives the content digest of a stored array."""
    den = dict(sp.denoiser)
    weights = den.pop("weights", {}) if isinstance(den.get("weights"), Mapping) else {}
    return json_digest(
        {
            "model": {
                "diameter_angstrom": sp.diameter_angstrom,
                "pixel_size_angstrom": sp.pixel_size_angstrom,
                "box": sp.box,
                "symmetry": sp.symmetry,
            },
            "maps": {role: array_digest(name) for role, name in sorted(sp.maps.items())},
            "denoiser": {"description": den, "weights": {k: array_digest(v) for k, v in sorted(weights.items())}},
            "particles": particles_digest(sp.particles),
            "contributors": sorted(sp.contributors.values()),
        }
    )
