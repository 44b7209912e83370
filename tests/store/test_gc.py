"""gc frees unreachable chunks after the grace period and nothing else."""

from __future__ import annotations

import numpy as np

from mrepo.store import write_array


def test_gc_removes_only_unreachable_old_chunks(repo, cli):
    a = np.random.default_rng(0).normal(size=(8, 32, 32)).astype(np.float32)
    write_array(repo.index, "keep", a, chunks=(1, 32, 32))
    repo.index.commit("keep")
    repo.create_branch("tmp")
    repo.checkout("tmp")
    write_array(repo.index, "gone", a + 5, chunks=(1, 32, 32))
    repo.index.commit("on tmp")
    repo.checkout("main")
    # staged but not committed chunks are kept too
    write_array(repo.index, "staged", a + 9, chunks=(1, 32, 32))
    n_before = len(list(repo.chunks.iter_digests()))
    r = cli("gc", "--grace", "0", cwd=repo.path, check=True)
    assert "freed 0 chunks" in r.stdout  # everything is reachable (branch tmp, index)
    repo.delete_branch("tmp")
    r = cli("gc", "--dry-run", cwd=repo.path, check=True)
    assert "would free 0 chunks" in r.stdout and "8 recent unreachable" in r.stdout
    r = cli("gc", "--grace", "0", cwd=repo.path, check=True)
    assert "freed 8 chunks" in r.stdout
    assert len(list(repo.chunks.iter_digests())) == n_before - 8
    assert cli("fsck", cwd=repo.path).returncode == 0
    np.testing.assert_array_equal(repo.open_array("HEAD", "keep")[:], a)
    sha = repo.index.commit("commit the staged array after gc")
    np.testing.assert_array_equal(repo.open_array(sha, "staged")[:], a + 9)
