"""Image files mrepo can add as arrays: MRC family, TIFF stacks, ``.npy``.

``read_image`` returns the data lazily where the format allows (memory-mapped
MRC and ``.npy``; TIFF pages through tifffile's zarr-backed memmap when the
file is contiguous) and the voxel size when the file records one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, NotFound
from .mrc import MRC_SUFFIXES, read_mrc

__all__ = ["ImageData", "read_image", "IMAGE_SUFFIXES"]

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = MRC_SUFFIXES + TIFF_SUFFIXES + (".npy",)


@dataclass
class ImageData:
    """Data of an image file.

    ``data`` is (z, y, x) for stacks and volumes, (y, x) for single 2D
    images of TIFF/NPY; ``voxel_size`` is in Å along (z, y, x) where known.
    ``source`` records the file's format facts (kept as array attributes).
    """

    data: Any
    voxel_size: tuple[float | None, float | None, float | None] | None
    source: dict[str, Any] = field(default_factory=dict)


def read_image(path: str | os.PathLike[str]) -> ImageData:
    """Open an MRC/MRCS/MAP/ST, TIFF or NPY file; one-line errors for bad files."""
    p = Path(path)
    if not p.exists():
        raise NotFound("no such file", str(p))
    if p.is_dir():
        raise FormatError("is a directory, not an image file", str(p))
    suffix = p.suffix.lower()
    if suffix in MRC_SUFFIXES:
        m = read_mrc(p)
        h = m.header
        src = {
            "format": "mrc",
            "file": p.name,
            "mode": h.mode,
            "byte_order": "little" if h.byte_order == "<" else "big",
            "ispg": h.ispg,
            "origin_angstrom": list(h.origin),
            "labels": list(h.labels),
        }
        if m.notes:
            src["notes"] = m.notes
        return ImageData(m.data, h.voxel_size, src)
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(p)
    if suffix == ".npy":
        try:
            data = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise FormatError(f"unreadable .npy: {str(e).splitlines()[0] if str(e) else type(e).__name__}", str(p)) from None
        return ImageData(data, None, {"format": "npy", "file": p.name})
    raise FormatError(
        f"unknown image type '{suffix or p.name}' (mrepo adds {', '.join(IMAGE_SUFFIXES)})", str(p)
    )


def _read_tiff(p: Path) -> ImageData:
    """A TIFF stack via tifffile (its log messages are turned into our errors)."""
    import logging

    import tifffile

    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with tifffile.TiffFile(p) as tf:
            if not len(tf.pages):
                raise FormatError("TIFF file has no image pages", str(p))
            data = tf.series[0].asarray()
            ij = tf.imagej_metadata or {}
            vs = None
            if ij.get("unit") in ("A", "Å", "angstrom"):
                xres = tf.pages[0].tags["XResolution"].value
                if xres[0]:
                    px = xres[1] / xres[0]
                    vs = (float(ij.get("spacing", px)), px, px)
    except FormatError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, EOFError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"unreadable TIFF: {msg}", str(p)) from None
    finally:
        log.setLevel(level)
    return ImageData(data, vs, {"format": "tiff", "file": p.name, "pages": int(data.shape[0]) if data.ndim == 3 else 1})
