"""`mrepo status`: a pending merge is shown; commands exit without noise."""

from __future__ import annotations

import subprocess
import sys

from popgen import make_population
from test_merge import _change_item

import mrepo
from mrepo.collab import MergeConflict, merge


def test_cli_exits_cleanly_in_a_fresh_lazy_clone(tmp_path, cli):
    """A lazy clone's history arrives as a git pack; dulwich's open pack files
    used to be closed only at interpreter shutdown ("Exception ignored in
    PackBasedObjectStore.__del__ ... sys.meta_path is None")."""
    central = mrepo.init_repo(tmp_path / "central")
    make_population(central, n_items=3, species={"A": 120})
    cli("clone", "--lazy", str(central.path), str(tmp_path / "lazy"), check=True)
    lazy = tmp_path / "lazy"
    assert list((lazy / ".git" / "objects" / "pack").glob("*.pack"))  # the case that was noisy
    env = {"PYTHONWARNINGS": "always::ResourceWarning"}  # no store left for the garbage collector to warn about
    for args in (("status",), ("log", "--oneline"), ("fsck",), ("show", "HEAD:species/A")):
        r = cli(*args, cwd=lazy, env=env)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stderr == "", (args, r.stderr)
    # the Python API: zarr arrays open (their stores hold repositories) until exit
    code = (
        "import mrepo, numpy as np\n"
        f"r = mrepo.open_repo({str(lazy)!r})\n"
        "pop = r.population()\n"
        "KEEP = [r.open_array('HEAD', pop.species['A'].maps['half1'])]\n"
        "print(float(np.asarray(KEEP[0][...]).sum()))\n"
    )
    p = subprocess.run([sys.executable, "-W", "always::ResourceWarning", "-c", code], capture_output=True, text=True, cwd=lazy, timeout=300)
    assert p.returncode == 0 and p.stderr == "", p.stderr


def test_status_mentions_a_pending_merge(repo, cli):
    make_population(repo, n_items=3, species={"A": 50})
    repo.create_branch("other")
    _change_item(repo, "movie_001", 20000.0)
    repo.checkout("other")
    _change_item(repo, "movie_001", 22000.0)
    repo.checkout("main")
    r = cli("status", cwd=repo.path, check=True)
    assert "merge" not in r.stdout.lower()
    try:
        merge(repo, "other")
        raise AssertionError("expected a conflict")
    except MergeConflict:
        pass
    r = cli("status", cwd=repo.path, check=True)
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].startswith("On branch main")
    assert "Merge in progress: merging other" in lines[1] and "1 conflict pending resolution" in lines[1]
    assert "  conflict: item frames1/movie_001" in lines
    assert any("--ours" in x and "--abort" in x for x in lines)
    cli("merge", "--abort", cwd=repo.path, check=True)
    r = cli("status", cwd=repo.path, check=True)
    assert "Merge in progress" not in r.stdout
