"""Repository basics through the Python API, the CLI and stock git."""

from __future__ import annotations

import json
import shutil
import subprocess

import mrcfile
import numpy as np
import pytest
import zarr

import mrepo
from mrepo.io.mrc import write_mrc
from mrepo.store import array_info, write_array, write_document

GIT = shutil.which("git")


def test_init_is_a_git_repository_stock_git_reads(tmp_path, cli):
    cli("init", str(tmp_path / "p"), check=True)
    repo = mrepo.open_repo(tmp_path / "p")
    a = np.arange(4 * 32 * 32, dtype=np.float32).reshape(4, 32, 32)
    txn = repo.index
    write_array(txn, "frames/a", a, attributes={"voxel_size": [1.0, 1.5, 1.5]})
    write_document(txn, "notes/info.json", json.dumps({"hello": "world"}))
    txn.commit("first data")
    if GIT is None:
        pytest.skip("git is not installed")
    log = subprocess.run([GIT, "-C", str(tmp_path / "p"), "log", "--format=%s"], capture_output=True, text=True, check=True)
    assert log.stdout.splitlines() == ["first data", "Initialize mrepo repository"]
    meta = subprocess.run(
        [GIT, "-C", str(tmp_path / "p"), "show", "HEAD:data/frames/a/zarr.json"], capture_output=True, text=True, check=True
    )
    doc = json.loads(meta.stdout)
    assert doc["shape"] == [4, 32, 32] and doc["attributes"]["voxel_size"] == [1.0, 1.5, 1.5]
    man = subprocess.run(
        [GIT, "-C", str(tmp_path / "p"), "show", "HEAD:data/frames/a/manifest.json"], capture_output=True, text=True, check=True
    )
    assert json.loads(man.stdout)["format"] == "mrepo-manifest"
    # no binary chunk data in git: every blob in the history is UTF-8 text
    blobs = subprocess.run(
        [GIT, "-C", str(tmp_path / "p"), "rev-list", "--objects", "--all"], capture_output=True, text=True, check=True
    ).stdout.split()
    for sha in blobs:
        if len(sha) == 40:
            kind = subprocess.run([GIT, "-C", str(tmp_path / "p"), "cat-file", "-t", sha], capture_output=True, text=True).stdout.strip()
            if kind == "blob":
                raw = subprocess.run([GIT, "-C", str(tmp_path / "p"), "cat-file", "blob", sha], capture_output=True).stdout
                raw.decode("utf-8")
    fsck = subprocess.run([GIT, "-C", str(tmp_path / "p"), "fsck", "--full", "--strict"], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr


def test_zarr_array_is_lazy_and_sliceable(repo):
    a = np.random.default_rng(0).normal(size=(16, 64, 64)).astype(np.float32)
    txn = repo.index
    info = write_array(txn, "stack", a, chunks=(2, 32, 32))
    assert info.n_chunks == 8 * 2 * 2
    sha = txn.commit("stack")
    z = repo.open_array(sha, "stack")
    assert isinstance(z, zarr.Array)
    reads = []
    orig = repo.chunks.get.__func__

    def counting_get(self, digest):
        reads.append(digest)
        return orig(self, digest)

    # a fresh process-level repository object is used by the store: patch the class
    from mrepo.store.chunks import ChunkStore

    ChunkStore.get = counting_get
    try:
        part = z[3, 10:20, 40:50]
    finally:
        ChunkStore.get = orig
    np.testing.assert_array_equal(part, a[3, 10:20, 40:50])
    assert len(reads) == 1, "a small slice must read only the chunk it lies in"
    np.testing.assert_array_equal(z[:], a)


def test_big_endian_and_all_dtypes_roundtrip(repo):
    txn = repo.index
    arrays = {
        "i8": np.arange(-60, 60, dtype=np.int8).reshape(2, 6, 10),
        "i16be": np.arange(120, dtype=">i2").reshape(2, 6, 10),
        "u16": np.arange(120, dtype=np.uint16).reshape(2, 6, 10),
        "f16": np.linspace(0, 1, 120, dtype=np.float16).reshape(2, 6, 10),
        "f32be": np.linspace(0, 1, 120).astype(">f4").reshape(2, 6, 10),
        "c64": (np.arange(120) + 1j).astype(np.complex64).reshape(2, 6, 10),
        "odd": np.arange(7 * 9 * 11, dtype=np.float32).reshape(7, 9, 11),
    }
    for name, a in arrays.items():
        write_array(txn, f"t/{name}", a, chunks=tuple(max(1, s // 2) for s in a.shape))
    sha = txn.commit("dtypes")
    for name, a in arrays.items():
        z = repo.open_array(sha, f"t/{name}")
        np.testing.assert_array_equal(z[:], a)


def test_cli_tour(tmp_path, cli):
    d = tmp_path / "proj"
    cli("init", str(d), check=True)
    vol = np.random.default_rng(1).normal(size=(24, 24, 24)).astype(np.float32)
    write_mrc(tmp_path / "vol.mrc", vol, 1.34)
    r = cli("add", str(tmp_path / "vol.mrc"), "--as", "maps/half1", cwd=d, check=True)
    assert "maps/half1" in r.stdout and "1.34" in r.stdout
    st = cli("status", cwd=d, check=True).stdout
    assert "added:" in st and "maps/half1" in st
    cli("commit", "-m", "add half map", cwd=d, check=True)
    assert "nothing to commit" in cli("status", cwd=d, check=True).stdout
    vol2 = vol.copy()
    vol2[:2] += 1
    write_mrc(tmp_path / "vol.mrc", vol2, 1.34)
    cli("add", str(tmp_path / "vol.mrc"), "--as", "maps/half1", "--chunks", "4,24,24", cwd=d, check=True)
    cli("commit", "-m", "second", cwd=d, check=True)
    log = cli("log", "--oneline", cwd=d, check=True).stdout.splitlines()
    assert len(log) == 3 and "second" in log[0] and "HEAD -> main" in log[0]
    full = cli("log", cwd=d, check=True).stdout
    assert "Author:" in full and "add half map" in full
    show = cli("show", "HEAD:maps/half1", cwd=d, check=True).stdout
    assert "24 x 24 x 24" in show and "float32" in show and "blake3:" in show and "1.34" in show
    diff = cli("diff", "HEAD~1", "HEAD", cwd=d, check=True).stdout
    assert "maps/half1" in diff and "modified" in diff
    cli("export", "HEAD~1:maps/half1", str(tmp_path / "out.mrc"), cwd=d, check=True)
    with mrcfile.open(tmp_path / "out.mrc") as m:
        np.testing.assert_array_equal(m.data, vol)
        assert abs(float(m.voxel_size.x) - 1.34) < 1e-5
    # branches, tags, checkout, revert
    cli("branch", "exp", cwd=d, check=True)
    assert "exp" in cli("branch", cwd=d, check=True).stdout
    cli("tag", "v1", "HEAD~1", "-m", "first map", cwd=d, check=True)
    assert "v1" in cli("tag", cwd=d, check=True).stdout
    cli("checkout", "v1", cwd=d, check=True)
    assert "detached" in cli("status", cwd=d, check=True).stdout
    cli("checkout", "main", cwd=d, check=True)
    rev = cli("revert", "HEAD", cwd=d, check=True)
    assert "Revert" in rev.stdout
    repo = mrepo.open_repo(d)
    np.testing.assert_array_equal(repo.open_array("HEAD", "maps/half1")[:], vol)
    np.testing.assert_array_equal(repo.open_array("HEAD~1", "maps/half1")[:], vol2)
    assert repo.commit_metadata("HEAD")["operation"] == "revert"
    assert "ok" in cli("fsck", cwd=d, check=True).stdout


def test_show_document_and_listing(repo, cli):
    txn = repo.index
    write_document(txn, "params.toml", 'resolution = 3.2\n')
    write_array(txn, "a/b", np.zeros((3, 3), np.float32))
    txn.commit("doc")
    out = cli("show", "HEAD:params.toml", cwd=repo.path, check=True).stdout
    assert out == "resolution = 3.2\n"
    listing = cli("show", "HEAD:", cwd=repo.path, check=True).stdout
    assert "document  params.toml" in listing and "array     a/b" in listing
    commit = cli("show", "HEAD", cwd=repo.path, check=True).stdout
    assert "doc" in commit and "params.toml" in commit


def test_rm_and_detached_commit(repo):
    txn = repo.index
    write_array(txn, "x", np.ones((4, 4), np.float32))
    first = txn.commit("x")
    from mrepo.porcelain import remove

    remove(repo, ["x"])
    second = repo.index.commit("rm x")
    assert array_info(repo.snapshot(first), "x").shape == (4, 4)
    with pytest.raises(mrepo.NotFound):
        repo.open_array(second, "x")
    repo.checkout(first)
    assert repo.head().branch is None
    write_array(repo.index, "y", np.ones((2,), np.float32))
    third = repo.index.commit("on detached head")
    assert repo.head().commit == third and repo.branches()["main"] == second


def test_array_digest_is_content_defined(tmp_path):
    a = np.arange(1000, dtype=np.float32).reshape(10, 100)
    digests = []
    for i in range(2):
        r = mrepo.init_repo(tmp_path / f"r{i}")
        digests.append(write_array(r.index, "same", a, chunks=(5, 100)).digest)
    assert digests[0] == digests[1]
    r = mrepo.open_repo(tmp_path / "r0")
    b = a.copy()
    b[0, 0] = -1
    assert write_array(r.index, "same", b, chunks=(5, 100)).digest != digests[0]


def test_a_closed_pipe_stops_output_quietly(repo):
    """`mrepo log | head`: when the reader goes away, no 'error: Broken pipe'."""
    import sys

    p = subprocess.Popen([sys.executable, "-m", "mrepo", "log"], cwd=repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read()
    p.wait(timeout=120)
    assert err == b"" and p.returncode == 141


def _mrc_with_raw_mode(path, shape, mode: int, payload: bytes, voxel: float) -> None:
    """An MRC file of an old mode mrcfile cannot write (3, 101): a valid
    header from mrcfile, then the mode word and the data replaced."""
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.zeros(shape, np.float32))
        m.voxel_size = voxel
    raw = bytearray(path.read_bytes()[:1024])
    raw[12:16] = np.int32(mode).tobytes()
    path.write_bytes(bytes(raw) + payload)


def test_add_every_mrc_mode_byte_order_tiff_and_npy(repo, cli, tmp_path):
    """`mrepo add` takes MRC files of every mode in both byte orders, TIFF
    stacks and .npy; each becomes an array named after the file's stem that
    reads back exactly, with the voxel size of the file."""
    import tifffile

    from mrepo.porcelain import add

    rng = np.random.default_rng(7)
    shape = (3, 6, 9)  # odd x: mode 101 rows are padded to whole bytes
    expected: dict[str, np.ndarray] = {}
    standard = {
        "m0": rng.integers(-128, 128, shape).astype(np.int8),
        "m1": rng.integers(-32768, 32768, shape).astype(np.int16),
        "m2": rng.normal(size=shape).astype(np.float32),
        "m4": (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64),
        "m6": rng.integers(0, 65536, shape).astype(np.uint16),
        "m12": rng.normal(size=shape).astype(np.float16),
    }
    for stem, a in standard.items():
        for order in ("<", ">"):
            name = f"{stem}_{'le' if order == '<' else 'be'}"
            with mrcfile.new(tmp_path / f"{name}.mrc", overwrite=True) as m:
                m.set_data(a.astype(a.dtype.newbyteorder(order)))
                m.voxel_size = 1.25
            expected[name] = a
    pairs = rng.integers(-300, 300, (*shape, 2)).astype(np.int16)
    _mrc_with_raw_mode(tmp_path / "m3_le.mrc", shape, 3, pairs.astype("<i2").tobytes(), 1.25)
    expected["m3_le"] = (pairs[..., 0] + 1j * pairs[..., 1]).astype(np.complex64)
    nibbles = rng.integers(0, 16, shape).astype(np.uint8)
    padded = np.zeros((*shape[:2], shape[2] + 1), np.uint8)
    padded[..., : shape[2]] = nibbles
    packed = padded[..., 0::2] | (padded[..., 1::2] << 4)  # first value in the low 4 bits
    _mrc_with_raw_mode(tmp_path / "m101.mrc", shape, 101, packed.tobytes(), 1.25)
    expected["m101"] = nibbles
    paths = [tmp_path / f"{n}.mrc" for n in expected]

    tif = rng.integers(0, 4096, (4, 16, 20)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "frames.tif", tif, photometric="minisblack")
    flt = rng.normal(size=(2, 8, 8)).astype(np.float32)
    tifffile.imwrite(tmp_path / "gain.tiff", flt, photometric="minisblack")
    npy = np.asfortranarray(rng.integers(-5, 5, (5, 7)).astype(">i4"))
    np.save(tmp_path / "table.npy", npy)
    expected.update({"frames": tif, "gain": flt, "table": npy})
    paths += [tmp_path / "frames.tif", tmp_path / "gain.tiff", tmp_path / "table.npy"]

    add(repo, paths[:-3])
    r = cli("add", *map(str, paths[-3:]), cwd=repo.path, check=True)  # several files at once, by the CLI
    assert "added array frames" in r.stdout and "added array table" in r.stdout
    sha = repo.index.commit("every input kind")
    for name, a in expected.items():
        z = repo.open_array(sha, name)
        got = z[:]
        assert got.shape == a.shape and got.dtype == a.dtype.newbyteorder("="), name
        np.testing.assert_array_equal(got, a, err_msg=name)
        if name.startswith("m"):
            assert z.attrs["voxel_size"] == pytest.approx([1.25] * 3), name
