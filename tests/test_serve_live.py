"""``schn serve`` over real sockets: concurrent searches, mutations that neither block searches nor
get lost (kill -9 after an acknowledged add), timeouts."""
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import numpy as np
import pytest
from conftest import free_port, schn_serve, serving
from PIL import Image

from schn.index import HammingIndex
from schn.serve import ServeLimits, create_app


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_searches_run_concurrently(idx):
    app = create_app(idx)
    service = app.state.service
    encode = service.encode

    def slow_encode(pictures):
        time.sleep(0.5)
        return encode(pictures)

    service.encode = slow_encode
    with serving(app) as url, ThreadPoolExecutor(4) as pool:
        start = time.perf_counter()
        codes = list(pool.map(lambda s: httpx.post(url + "/search", files={"image": ("q.png", png(s), "image/png")},
                                                   timeout=10).status_code, range(4)))
        took = time.perf_counter() - start
    assert codes == [200] * 4
    assert took < 1.5, f"4 searches of 0.5 s each took {took:.2f} s: they did not run concurrently"


def test_a_slow_save_blocks_no_search_and_concurrent_adds_are_all_kept(idx, monkeypatch):
    save = HammingIndex.save

    def slow_save(self, path=None):
        time.sleep(0.6)
        return save(self, path)

    monkeypatch.setattr(HammingIndex, "save", slow_save)
    app = create_app(idx)
    before = len(app.state.service.index)
    with serving(app) as url, ThreadPoolExecutor(4) as pool:
        adds = [pool.submit(httpx.post, url + "/items", files=[("images", (f"{s}.png", png(100 + s), "image/png"))],
                            data={"ids": [f"new-{s}"]}, timeout=30) for s in range(3)]
        time.sleep(0.2)  # the first add is saving now
        start = time.perf_counter()
        found = httpx.post(url + "/search?k=3", json={"id": "0"}, timeout=10)
        search_took = time.perf_counter() - start
        assert found.status_code == 200 and search_took < 0.4, f"a search waited {search_took:.2f} s for a save"
        assert [a.result().status_code for a in adds] == [201] * 3  # one at a time, none lost
        assert httpx.get(url + "/health").json()["items"] == before + 3
    on_disk = HammingIndex.open(idx)
    assert len(on_disk) == before + 3 and all(f"new-{s}" in on_disk for s in range(3))


def test_search_and_body_timeouts(idx, monkeypatch):
    app = create_app(idx, limits=ServeLimits(search_timeout=0.3, body_timeout=0.5))
    search = HammingIndex.search_ids

    def slow_search(self, *args, **kwargs):
        time.sleep(1.0)
        return search(self, *args, **kwargs)

    monkeypatch.setattr(HammingIndex, "search_ids", slow_search)
    with serving(app) as url:
        slow = httpx.post(url + "/search", json={"id": "0"}, timeout=10)
        assert slow.status_code == 503 and "longer than 0.3 s" in slow.json()["error"]
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as conn:  # promises a body, sends none
            conn.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n")
            start = time.perf_counter()
            answer = conn.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408") and time.perf_counter() - start < 3, answer


def test_an_acknowledged_add_survives_kill_9(idx):
    """The real command: `schn serve`, an add, then SIGKILL; the item and its image are on disk."""
    with schn_serve(idx, "--api-key", "k") as (server, url, port):
        data = png(7)
        added = httpx.post(url + "/items", files=[("images", ("q.png", data, "image/png"))], data={"ids": ["kept"]},
                           headers={"X-API-Key": "k"}, timeout=30)
        assert added.status_code == 201, added.text
        os.kill(server.pid, signal.SIGKILL)
    index = HammingIndex.open(idx)  # checksums verified
    assert "kept" in index and (idx / index.items(["kept"])[0]["path"]).read_bytes() == data


def test_threads_share_one_service_safely(idx):
    """Many searches racing a stream of adds and deletes: every answer is complete and consistent."""
    app = create_app(idx)
    service = app.state.service
    errors = []
    stop = threading.Event()

    def searcher():
        while not stop.is_set():
            index = service.index
            found = index.search_ids([str(index.ids[0])], 5)
            if found.ids.shape != (1, 5) or not all(i in index for i in found.ids[0]):
                errors.append(found)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for s in range(4):
            picture = Image.open(io.BytesIO(png(200 + s)))
            service.add([picture], ["PNG"], [png(200 + s)], ids=[f"t{s}"])
            if s % 2:
                service.delete(f"t{s - 1}")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert {"t1", "t3"} <= set(HammingIndex.open(idx).ids.tolist()) and "t0" not in HammingIndex.open(idx)


def serve_fails(*args, env=None):
    done = subprocess.run([sys.executable, "-m", "schn", "serve", *args], capture_output=True, text=True, timeout=60,
                          env=env)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("options,words", [
    (["--port", "99999"], "--port 99999"),
    (["--port", "0"], "--port 0"),
    (["--max-upload-mb", "-1"], "--max-upload-mb"),
    (["--max-upload-mb", "inf"], "--max-upload-mb"),
    (["--timeout", "-5"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--keep-alive", "0"], "--keep-alive"),
    (["--max-pixels", "-1"], "--max-pixels"),
    (["--worker-threads", "0"], "--worker-threads"),
    (["--threads", "0"], "--threads"),
    (["--max-connections", "0"], "--max-connections"),
    (["--host", ""], "--host"),
    (["--host", " 127.0.0.1"], "--host"),
    (["--log-level", "loud"], "--log-level"),
    (["--api-key", ""], "API key is empty"),
    (["--api-key", "a key "], "API key"),
    (["--run", "/no/such/run"], "--run"),
])
def test_serve_refuses_bad_options_at_once(tmp_path, options, words):
    """Issue 12, defect 8: these were accepted (and every search failed later) or printed "serving"
    and then a traceback. Now: one `error:` line, exit 2, before the index or torch is loaded."""
    start = time.perf_counter()
    code, out, err = serve_fails(str(tmp_path / "not-even-an-index"), *options)
    assert code == 2 and "serving" not in out, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
    assert time.perf_counter() - start < 10  # nothing heavy was imported (torch alone takes seconds)


def test_serve_refuses_a_port_in_use_and_a_bad_searcher(idx):
    """Issue 12, defect 8: a port in use printed "serving", then uvicorn's own line, exit 3."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = serve_fails(str(idx), "--port", str(port))
    assert code == 2 and "serving" not in out and err.count("\n") == 1, (out, err)
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use"), err
    code, out, err = serve_fails(str(idx), "--port", str(free_port()), "--searcher", "fast", "--device", "cpu")
    assert code == 2 and "serving" not in out and err.startswith("error: --searcher 'fast'") and err.count("\n") == 1


def test_half_open_connections_are_closed_and_others_served(idx):
    """Issue 12, defect 12 (slowloris): clients that send part of their headers, or nothing, and go
    quiet held their connections past 45 s with --timeout 30. With --timeout 3 the server closes
    them after about 3 s, serves other clients meanwhile, and answers connections over
    --max-connections with a 503."""
    with schn_serve(idx, "--timeout", "3", "--max-connections", "50") as (server, url, port):
        opened = time.monotonic()
        hanging = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
        for i, conn in enumerate(hanging[:30]):  # part of the headers; the rest send nothing at all
            conn.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: appl" if i % 2 else b"GE")
        with httpx.Client(base_url=url, timeout=5) as client:  # one connection, kept alive
            for _ in range(5):
                assert client.get("/health").status_code == 200
                assert client.post("/search?k=3", json={"id": "0"}).status_code == 200
            over = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(15)]
            for conn in over:
                conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answers = [conn.recv(65536).decode() for conn in over]
            assert {a.split(" ")[1] for a in answers} == {"200", "503"}, answers  # 41 + 15 connections > 50
            assert '"status": 503' in [a for a in answers if " 503 " in a][0]
            for conn in over:
                conn.close()
            for conn in hanging:
                answer = conn.recv(65536)  # blocks until the server answers or closes
                took = time.monotonic() - opened
                assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
                assert 2.5 < took < 6, f"a half-open connection was closed after {took:.1f} s"
                conn.close()
            assert client.get("/health").status_code == 200  # still serving, on a new connection if need be
        assert server.poll() is None
