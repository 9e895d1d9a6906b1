"""Fixtures shared by test files."""
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")
FAST = ["--set", "train.iterations=2", "--set", "train.bits=16", "--set", "train.epochs_per_iteration=1"]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A tiny 16-bit SCHN run on digits, trained once per test session by the CLI."""
    from schn.cli import main

    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "--config", DIGITS, *FAST, "--set", f"run.out_dir={out}", "--set", "run.name=r1", "--quiet"]) == 0
    return out / "r1"


@pytest.fixture(scope="session")
def stored_index(digits_run, tmp_path_factory):
    """The digits run's database indexed with its images in the index's store, built once per
    session; copy it before changing it."""
    from schn.index.build import build_index

    folder = tmp_path_factory.mktemp("stored") / "idx"
    build_index(digits_run, folder, store_images=True, progress=False)
    return folder


@pytest.fixture
def idx(stored_index, tmp_path):
    """A copy of ``stored_index`` for one test to change."""
    import shutil

    return shutil.copytree(stored_index, tmp_path / "idx")


@contextmanager
def child_process(args, **popen):
    """``subprocess.Popen(args)``, killed (SIGKILL) if it still runs when the block ends."""
    import subprocess

    proc = subprocess.Popen(args, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def schn_serve(idx, *options, seconds: float = 60):
    """The real ``schn serve IDX OPTIONS`` on a free port, once /health answers; yields
    (process, base URL, port) and kills the process when the block ends."""
    import subprocess
    import sys

    import httpx2 as httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "schn", "serve", str(idx), "--port", str(port), *options]
    with child_process(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as server:
        deadline = time.monotonic() + seconds
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"schn serve did not answer within {seconds} s"
            time.sleep(0.2)
        yield server, url, port


def train_in_one_and_two_processes(tmp_path, settings):
    """``schn train`` on digits with ``settings`` into ``tmp_path/one`` in this process, then under
    ``torchrun`` with 2 processes into ``tmp_path/two``; returns the torchrun's completed process."""
    import subprocess
    import sys

    from schn.cli import main

    assert main(["train", "--config", DIGITS, *settings, "--set", f"run.out_dir={tmp_path}", "--set", "run.name=one",
                 "--quiet"]) == 0
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "schn", "train",
                           "--config", DIGITS, *settings, "--set", f"run.out_dir={tmp_path}", "--set", "run.name=two",
                           "--quiet"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app):
    """An ASGI app served by uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), "the service stopped while starting"
            assert time.monotonic() < deadline, "the service did not start within 20 s"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def milvus_server_uri(tmp_path_factory):
    """A real Milvus standalone server for the session (tests/milvus_standalone.py: free ports,
    authorization on), as a URI with the root user's credentials; stopped and its folder removed
    at the end. A server that cannot start fails the tests that need it; set
    SCHN_SKIP_MILVUS_SERVER=1 to skip them instead."""
    import os
    import shutil

    if os.environ.get("SCHN_SKIP_MILVUS_SERVER"):
        pytest.skip("SCHN_SKIP_MILVUS_SERVER is set")
    from milvus_standalone import milvus_server

    base = tmp_path_factory.mktemp("milvus-server")
    try:
        with milvus_server(base, authorization=True) as server:
            yield server.credentials_uri
    finally:
        shutil.rmtree(base, ignore_errors=True)  # ~400 MB of unpacked binaries and data
