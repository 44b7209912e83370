"""Servers for the collab tests, all on 127.0.0.1, started and stopped here:
a git daemon (history), an S3-compatible server (moto, chunks) and a TCP
proxy that can cut connections mid-transfer (a server dying)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class GitDaemon:
    """``git daemon`` serving every repository under ``root`` (push enabled)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GitDaemon":
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", f"--base-path={self.root}", "--export-all", "--enable=receive-pack",
             f"--port={self.port}", "--listen=127.0.0.1", "--informative-errors", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:  # `git daemon` runs git-daemon as a child: kill the group
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
            self.proc = None

    def url(self, rel: str) -> str:
        return f"git://127.0.0.1:{self.port}/{rel}"


@pytest.fixture
def git_daemon(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    root = tmp_path / "served"
    root.mkdir()
    d = GitDaemon(root).start()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (in this process; its state survives
    connection cuts made by the proxy)."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("obstore")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    wait_port(port)
    yield port
    srv.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket; AWS_* variables point at the local server. Returns (endpoint, bucket)."""
    import uuid

    import boto3

    endpoint = f"http://127.0.0.1:{s3_server}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "MREPO_S3_RETRIES": "1", "MREPO_S3_RETRY_SECONDS": "3"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"mrepo-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    return endpoint, bucket


class CutProxy:
    """TCP proxy to 127.0.0.1:``target``; after ``cut_after`` bytes in either
    direction it resets every connection and stops listening (the server
    "dies"); :meth:`restart` listens again on the same port, uncut."""

    def __init__(self, target: int, cut_after: int | None = None) -> None:
        self.target = target
        self.port = free_port()
        self.cut_after = cut_after
        self.moved = 0
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._start()

    def _start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            with self._lock:
                self._socks += [c, s]
            threading.Thread(target=self._pipe, args=(c, s), daemon=True).start()
            threading.Thread(target=self._pipe, args=(s, c), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                with self._lock:
                    self.moved += len(data)
                    over = self.cut_after is not None and self.moved > self.cut_after
                if over:
                    self.kill()
                    return
                b.sendall(data)
        except OSError:
            pass
        finally:
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def kill(self) -> None:
        self.cut.set()
        with self._lock:
            socks, self._socks = self._socks, []
            ls, self._listener = self._listener, None
        if ls is not None:
            try:
                ls.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            except OSError:
                pass
            ls.close()
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()
            except OSError:
                pass

    def restart(self) -> None:
        self.kill()
        self.cut_after = None
        self.cut.clear()
        self._start()

    def close(self) -> None:
        self.kill()


@pytest.fixture
def cut_proxy():
    made: list[CutProxy] = []

    def make(target: int, cut_after: int | None = None) -> CutProxy:
        p = CutProxy(target, cut_after)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()
