"""A repository written by format version 1 still reads, verifies and takes commits."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np

import mrepo
from mrepo.store import write_array

DATA = Path(__file__).resolve().parents[1] / "data"


def _expected() -> dict[str, np.ndarray]:
    # the same formulas as tests/data/make_repo_format_v1.py, restated here
    return {
        "frames/movie": (np.arange(6 * 16 * 16) % 251).astype(np.float32).reshape(6, 16, 16),
        "maps/half1": np.linspace(-1, 1, 12**3, dtype=np.float32).reshape(12, 12, 12),
        "counts": np.arange(100, dtype=np.uint16).reshape(10, 10),
    }


def test_format_v1_repository_reads(tmp_path, cli):
    with tarfile.open(DATA / "repo-format-v1.tar.gz") as tf:
        tf.extractall(tmp_path, filter="data")
    path = tmp_path / "repo"
    repo = mrepo.open_repo(path)
    assert json.loads((path / ".git" / "mrepo" / "format.json").read_text())["version"] == 1
    exp = _expected()
    for name, a in exp.items():
        np.testing.assert_array_equal(repo.open_array("main", name)[:], a)
    assert repo.open_array("v1", "frames/movie").attrs["voxel_size"] == [1.0, 1.2, 1.2]
    assert json.loads(repo.read_document("v1", "notes/params.json")) == {"voltage_kv": 300}
    assert [c.summary for c in repo.log("main")] == [
        "format v1: half map",
        "format v1: frames and counts",
        "Initialize mrepo repository",
    ]
    assert repo.commit_metadata("main") == {"operation": "test"}
    assert repo.branches()["side"] == repo.resolve("v1")
    assert "ok" in cli("fsck", cwd=path, check=True).stdout
    # and a new version can keep writing it
    write_array(repo.index, "new", np.ones(3, np.float32))
    repo.index.commit("written by the current version")
    assert repo.fsck().ok
