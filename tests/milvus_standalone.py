"""A throwaway Milvus standalone server for the tests and the benchmark: PyPI's ``milvus`` 2.3.5,
an embedded build of the real server (gRPC on 127.0.0.1, embedded etcd, rocksmq, local storage).

Everything lives in one folder that the caller owns: the unpacked binary (~390 MB, ~6 s to unpack),
its config, etcd and segment data, logs. Every port is one the OS just handed out as free, among
them the embedded etcd's client and peer ports, which the package leaves at 2379/2380: two test
runs, or a leftover server, never clash. The server is killed with the process that started it
(PR_SET_PDEATHSIG), so even a test run killed by SIGKILL leaves no orphan.

    with milvus_server(folder, authorization=True) as server:
        server.uri  # "http://127.0.0.1:PORT" (root:Milvus when authorization is on)
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 90
ROOT_CREDENTIALS = "root:Milvus"  # Milvus' default root user when authorization is on


@dataclass
class MilvusServer:
    base: Path
    port: int
    process: subprocess.Popen
    authorization: bool

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def credentials_uri(self) -> str:
        """The URI with the root user's credentials (what a client needs when authorization is on)."""
        return f"http://{ROOT_CREDENTIALS}@127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        logs = sorted((self.base / "logs").glob("milvus-std*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in logs)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the parent dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _write_config(base: Path, authorization: bool) -> tuple[int, int, dict]:
    """milvus.yaml from the package's template with fresh ports; returns (proxy port, metrics port, env)."""
    import milvus  # the PyPI package (test extra), not schn's backend

    config = milvus.MilvusServerConfig(data_dir=str(base))
    ports = {key: _free_port() for key in config.configurable_items if key.endswith("_port")}
    config.update(**ports)
    config.set("authorization_enabled", authorization)
    config.resolve()  # writes BASE/configs/milvus.yaml (and makes logs/, data/)
    milvus._initialize_data_files(str(base))  # unpacks BASE/bin/milvus and its libraries
    etcd_peer, metrics = _free_port(), _free_port()
    etcd = base / "configs" / "etcd.yaml"  # embedded etcd ignores etcd.endpoints; it reads this file
    client, peer = f"http://localhost:{ports['etcd_port']}", f"http://localhost:{etcd_peer}"
    etcd.write_text(f"name: schn-test\nlisten-client-urls: {client}\nadvertise-client-urls: {client}\n"
                    f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
                    f"initial-cluster: schn-test={peer}\n")
    env = {**os.environ, "DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(metrics),
           "MILVUS_RUN_DIR": str(base / "run"), "ETCD_CONFIG_PATH": str(etcd),
           "LD_LIBRARY_PATH": ":".join([str(base / "bin"), os.environ.get("LD_LIBRARY_PATH", "")])}
    return ports["proxy_port"], metrics, env


def _wait_healthy(server: MilvusServer, metrics_port: int, deadline: float) -> None:
    url = f"http://127.0.0.1:{metrics_port}/healthz"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"Milvus exited with status {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if b"OK" in reply.read():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"Milvus did not report healthy within {START_TIMEOUT_S} s:\n{server.log_tail()}")


def stop(process: subprocess.Popen, grace_s: float = 3) -> None:
    """SIGTERM (Milvus stops its components in order), SIGKILL after ``grace_s`` (the data is thrown away)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def milvus_server(base, *, authorization: bool = False):
    """A started Milvus standalone server in folder ``base`` (created; left for the caller to remove)."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    port, metrics, env = _write_config(base, authorization)
    with open(base / "logs" / "milvus-stdout.log", "wb") as out, open(base / "logs" / "milvus-stderr.log", "wb") as err:
        process = subprocess.Popen([str(base / "bin" / "milvus"), "run", "standalone"], cwd=base, env=env,
                                   stdout=out, stderr=err, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    server = MilvusServer(base, port, process, authorization)
    try:
        _wait_healthy(server, metrics, time.monotonic() + START_TIMEOUT_S)
        yield server
    finally:
        stop(process)


def wait_sealed(index, timeout_s: float = 120) -> float:
    """After ``save()`` (a flush) of a ``MilvusIndex`` on a server, wait until its query node
    serves every row from sealed segments with the collection's index built (until then the rows
    sit in growing segments, which a server scans row by row: 250 ms per query at 200k rows).
    Returns the seconds waited."""
    from pymilvus import utility

    start = time.monotonic()
    rows = len(index)
    while True:
        built = index.client.describe_index(index.collection, "code")
        served = utility.get_query_segment_info(index.collection, using=index.client._using)
        sealed = sum(s.num_rows for s in served if s.state == 3)  # 3: SegmentState.Sealed
        if built.get("indexed_rows") == rows and sealed == rows:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise RuntimeError(f"{index.collection}: {sealed} of {rows} rows sealed and served, "
                               f"index {built} after {timeout_s} s")
        time.sleep(0.5)
