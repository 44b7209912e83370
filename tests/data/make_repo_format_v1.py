"""Writes tests/data/repo-format-v1.tar.gz: a small repository in format version 1.

Kept so that later versions of mrepo can be checked against what version 1
wrote (tests/store/test_format_compat.py). Do not regenerate it after the
format changes: it is a record of the old format.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import numpy as np

import mrepo
from mrepo.store import write_array, write_document


def arrays() -> dict[str, np.ndarray]:
    return {
        "frames/movie": (np.arange(6 * 16 * 16) % 251).astype(np.float32).reshape(6, 16, 16),
        "maps/half1": np.linspace(-1, 1, 12**3, dtype=np.float32).reshape(12, 12, 12),
        "counts": np.arange(100, dtype=np.uint16).reshape(10, 10),
    }


def main() -> None:
    out = Path(__file__).with_name("repo-format-v1.tar.gz")
    with tempfile.TemporaryDirectory() as d:
        repo = mrepo.init_repo(Path(d) / "repo")
        a = arrays()
        txn = repo.index
        write_array(txn, "frames/movie", a["frames/movie"], chunks=(2, 16, 16), attributes={"voxel_size": [1.0, 1.2, 1.2]})
        write_array(txn, "counts", a["counts"], chunks=(5, 5))
        write_document(txn, "notes/params.json", '{"voltage_kv": 300}\n')
        txn.commit("format v1: frames and counts", author="mrepo tests <tests@mrepo>")
        repo.create_tag("v1")
        write_array(repo.index, "maps/half1", a["maps/half1"], chunks=(6, 12, 12), attributes={"voxel_size": [2.5, 2.5, 2.5]})
        repo.index.commit("format v1: half map", author="mrepo tests <tests@mrepo>", metadata={"operation": "test"})
        repo.create_branch("side", "v1")
        with tarfile.open(out, "w:gz") as tf:
            tf.add(Path(d) / "repo", arcname="repo")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
