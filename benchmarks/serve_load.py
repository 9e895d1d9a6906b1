"""Load test of ``schn serve`` on loopback (127.0.0.1 only): throughput and latency under concurrency.

Setup (in --work, reused when a previous setup of the same size is there): a small digits run
trained by the CLI at --bits, its index built with stored images, then synthetic items up to
--items in all: clustered codes (a random database item's code with every bit flipped with
probability --flip, so they look like learned codes), string ids ``syn-0000001``..., the source
item's labels. The service is started as a subprocess on a free loopback port; the client (this
process, asyncio with one bare keep-alive HTTP/1.1 connection per worker, --concurrency of them) runs

- "search by id": --searches ``POST /search?k=10`` with ``{"id": ...}``, ids drawn (seeded) from
  the whole index;
- "search by upload": --uploads ``POST /search?k=10`` with an 8x8 digit PNG (multipart);
- "health": ``GET /health`` as many times as "search by id" (the HTTP stack's floor);
- "in-process": the same id searches on ``HammingIndex.open(IDX).search_ids`` one at a time in
  this process, no HTTP, after the service has stopped (the service's overhead is HTTP p50 /
  in-process p50, same run); with FAISS's own number of OpenMP threads, then with one.

Per phase: requests, errors by status or exception type, wall seconds, requests/s, latency
p50/p90/p99/max (ms, successful requests). The first 50 id searches over HTTP are checked
against the in-process results (same ids, same distances). ``GET /stats`` is read after the id
searches and at the end (the service's own p50/p99 of ``POST /search``). Client and service
share the machine's cores, so figures are what one machine does serving itself.

    .venv/bin/python benchmarks/serve_load.py                       # 1M items, 10,000 + 2,000 requests
    .venv/bin/python benchmarks/serve_load.py --items 20000 --searches 500 --uploads 100   # quick

The "client CPU" column is the load generator's CPU time in % of one core: near 100% the client,
not the service, sets the pace.

FAISS's OpenMP threads wait on each other while another process keeps a core busy (here the
client does): a flat-scan query then takes ~30 ms instead of ~0.2 ms. ``OMP_NUM_THREADS=1`` in the
environment (recorded in the results) reaches the service and the in-process reference alike.

Every request has a 30 s timeout; after --deadline seconds (from the start of the script) the
requests not yet answered are cancelled and counted as not sent. The service is stopped
(terminate, kill after 10 s) whatever happens. Exit status 1 on any error or unsent request.
Writes --out (JSON) and --md (markdown); the service's log is WORK/serve.log.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import inspect
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from schn.codes import packed_width
from schn.fileio import write_json, write_text
from schn.index import HammingIndex
from schn.index.build import build_index, model_checksum

ROOT = Path(__file__).resolve().parents[1]
SCHN = str(Path(sys.executable).parent / "schn")
HOST = "127.0.0.1"  # loopback only, by design
REQUEST_TIMEOUT_S = 30.0
STARTUP_TIMEOUT_S = 300.0
TRAIN_TIMEOUT_S = 1800.0
STOP_GRACE_S = 10.0
CHUNK = 1 << 18  # synthetic rows generated at a time
CHECKED = 50  # id searches compared between HTTP and in-process


# ---- setup --------------------------------------------------------------------------------------
def train_run(work: Path, bits: int) -> tuple[Path, float | None]:
    """The digits run at ``bits`` (trained by the CLI unless already there); (folder, train seconds)."""
    name = f"digits-{bits}b"
    run_dir = work / "runs" / name
    if (run_dir / "checkpoint.pt").is_file() and (run_dir / "codes.npz").is_file():
        return run_dir, None
    if run_dir.exists():  # a run interrupted before it finished: ours, in our work folder
        shutil.rmtree(run_dir)
    cmd = [SCHN, "train", "--config", "configs/digits.yaml", "--set", f"train.bits={bits}",
           "--set", "train.iterations=3", "--set", "train.epochs_per_iteration=1",
           "--set", f"run.out_dir={work / 'runs'}", "--set", f"run.name={name}", "--quiet"]
    print("train:", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(work / "train.log", "w") as log:
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=TRAIN_TIMEOUT_S)
    if done.returncode != 0:
        raise SystemExit(f"training failed (exit {done.returncode}); see {work / 'train.log'}:\n"
                         + (work / "train.log").read_text()[-2000:])
    return run_dir, time.perf_counter() - start


def synthetic(index: HammingIndex, extra: int, rng, bits: int, flip: float):
    """``extra`` clustered codes around random stored items, with their ids and copied labels."""
    n0 = len(index)
    db = np.asarray(index.codes)
    codes = np.empty((extra, packed_width(bits)), dtype=np.uint8)
    labels = None
    for start in range(0, extra, CHUNK):
        m = min(CHUNK, extra - start)
        src = rng.integers(0, n0, m)
        noise = np.packbits(rng.random((m, bits), dtype=np.float32) < flip, axis=1)  # padding bits stay 0
        codes[start:start + m] = db[src] ^ noise
        rows = index.labels(src)
        if rows is not None:
            if labels is None:
                labels = np.empty((extra, rows.shape[1]), dtype=np.uint8)
            labels[start:start + m] = rows
    ids = [f"syn-{i:07d}" for i in range(1, extra + 1)]
    return codes, ids, labels


def prepare(args, work: Path) -> dict:
    """Train, build and fill the index, or reuse the ones a previous run of this size left."""
    work.mkdir(parents=True, exist_ok=True)
    run_dir, train_s = train_run(work, args.bits)
    idx = work / f"index-{args.bits}b-{args.items}"
    marker = work / f"index-{args.bits}b-{args.items}.json"
    want = dict(items=args.items, bits=args.bits, seed=args.seed, flip=args.flip, run=str(run_dir.resolve()),
                model_checksum=model_checksum(run_dir))
    if marker.is_file() and (idx / "manifest.json").is_file():
        done = json.loads(marker.read_text())
        if {k: done.get(k) for k in want} == want:
            try:
                count = len(HammingIndex.open(idx, verify=False))
            except Exception as exc:  # damaged: build again below
                print(f"cannot reuse {idx} ({exc}); building it again", flush=True)
            else:
                if count == done["count"]:
                    print(f"reusing {idx} ({count:,} items)", flush=True)
                    return dict(done, index=str(idx), reused=True, train_s=train_s)
    marker.unlink(missing_ok=True)
    if idx.exists():
        shutil.rmtree(idx)
    start = time.perf_counter()
    options = {"progress": False}
    if "store_images" in inspect.signature(build_index).parameters:
        options["store_images"] = True
    else:
        print("WARNING: build_index has no store_images yet; the index holds no images", flush=True)
    index = build_index(run_dir, idx, **options)
    build_s = time.perf_counter() - start
    n0 = len(index)
    extra = max(0, args.items - n0)
    start = time.perf_counter()
    rng = np.random.default_rng([args.seed, args.bits, args.items])
    codes, ids, labels = synthetic(index, extra, rng, args.bits, args.flip)
    if extra:
        index.add(codes, ids=ids, labels=labels)
        index.save()
    synth_s = time.perf_counter() - start
    images = len(list((idx / "images").iterdir())) if (idx / "images").is_dir() else 0
    done = dict(want, count=len(index), database_items=n0, synthetic_items=extra, stored_images=images,
                build_s=round(build_s, 2), synthetic_s=round(synth_s, 2))
    write_json(marker, done)
    print(f"index {idx}: {n0:,} run items ({images:,} stored images) + {extra:,} synthetic; "
          f"build {build_s:.1f} s, synthetic {synth_s:.1f} s", flush=True)
    return dict(done, index=str(idx), reused=False, train_s=train_s)


def digit_pngs(count: int = 10) -> list[tuple[str, bytes]]:
    """The first image of each digit class, as 8x8 grey PNGs (0..16 scaled to 0..255 like the reader)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    out = []
    for cls in range(min(count, 10)):
        i = int(np.flatnonzero(bunch.target == cls)[0])
        buf = io.BytesIO()
        Image.fromarray(np.round(bunch.images[i] * (255.0 / 16.0)).astype(np.uint8), mode="L").save(buf, "PNG")
        out.append((f"digit-{cls}-{i}.png", buf.getvalue()))
    return out


# ---- the service ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def process_tree_kib(pid: int) -> dict:
    """Resident and peak memory (KiB) of a process and its descendants, from /proc (0 if unreadable)."""
    pids, seen, rss, hwm = [pid], set(), 0, 0
    while pids:
        p = pids.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                pids.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return {"rss_mib": round(rss / 1024, 1), "peak_rss_mib": round(hwm / 1024, 1), "processes": len(seen)}


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def start_service(idx: str, port: int, log_path: Path, extra: list[str] = ()) -> tuple[subprocess.Popen, float]:
    """Start ``schn serve`` and wait until GET /health answers 200; (process, startup seconds)."""
    cmd = [SCHN, "serve", idx, "--host", HOST, "--port", str(port), *extra]
    print("serve:", " ".join(cmd), flush=True)
    log = open(log_path, "w")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child holds its own descriptor
    url = f"http://{HOST}:{port}/health"
    while True:
        elapsed = time.perf_counter() - start
        if proc.poll() is not None:
            raise RuntimeError(f"schn serve exited with status {proc.returncode} before answering /health:\n"
                               + log_tail(log_path))
        if elapsed > STARTUP_TIMEOUT_S:
            raise RuntimeError(f"schn serve did not answer /health within {STARTUP_TIMEOUT_S:.0f} s:\n"
                               + log_tail(log_path))
        try:
            if get_blocking(url) == 200:
                return proc, time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.2)


def stop_service(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        print(f"schn serve did not stop within {STOP_GRACE_S:.0f} s of SIGTERM; killing it", flush=True)
        proc.kill()
        proc.wait(timeout=STOP_GRACE_S)


# ---- the client -----------------------------------------------------------------------------------
class Response:
    def __init__(self, status_code: int, content: bytes):
        self.status_code, self.content = status_code, content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


class Connection:
    """One keep-alive HTTP/1.1 connection to the service. A bare client on purpose: httpx's pool
    costs ~3.7 ms of CPU per request at 32 connections (encode/httpx#3215), enough to make the
    load generator, not the service, the bottleneck on two shared cores."""

    def __init__(self, base: str):
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        assert self.host == HOST, "loopback only"
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str | None = None) -> Response:
        return await asyncio.wait_for(self._request(method, path, body, content_type), REQUEST_TIMEOUT_S)

    async def _request(self, method, path, body, content_type) -> Response:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        try:
            status_line = await self.reader.readuntil(b"\r\n")
            headers = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            length = int(headers.split("content-length:", 1)[1].split("\r\n", 1)[0])
            content = await self.reader.readexactly(length)
        except BaseException:
            await self.close()  # the connection's state is unknown: start a new one next time
            raise
        if "connection: close" in headers:
            await self.close()
        return Response(int(status_line.split()[1]), content)

    async def get(self, path: str) -> Response:
        return await self.request("GET", path)

    async def post_json(self, path: str, obj) -> Response:
        return await self.request("POST", path, json.dumps(obj).encode(), "application/json")

    async def post_files(self, path: str, field: str, name: str, data: bytes, media: str,
                         fields: dict | None = None) -> Response:
        boundary = "schnload" + os.urandom(8).hex()
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                 for k, v in (fields or {}).items()]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                     f"Content-Type: {media}\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode())
        return await self.request("POST", path, b"".join(parts), f"multipart/form-data; boundary={boundary}")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


def get_blocking(url: str, timeout: float = 5.0) -> int:
    """Status of one GET (for waiting on the service to start)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status


def summary(name: str, n: int, latencies: list, errors: collections.Counter, done: int, wall: float,
            samples: dict | None = None) -> dict:
    lat = np.asarray(latencies) * 1e3
    pct = (lambda q: round(float(np.percentile(lat, q)), 3)) if len(lat) else (lambda q: None)
    return dict(phase=name, requests=n, ok=len(lat), errors=int(sum(errors.values())), error_types=dict(errors),
                error_samples=samples or {}, not_sent=n - done, wall_s=round(wall, 3),
                throughput=round(done / wall, 1) if wall > 0 else None,
                p50_ms=pct(50), p90_ms=pct(90), p99_ms=pct(99),
                max_ms=round(float(lat.max()), 3) if len(lat) else None,
                mean_ms=round(float(lat.mean()), 3) if len(lat) else None)


async def http_phase(name: str, base: str, n: int, concurrency: int, send, check, deadline: float,
                     keep=None) -> dict:
    """``n`` requests over ``concurrency`` workers; ``send(client, i)`` -> response, ``check(resp)`` ->
    None or an error name. ``keep(i, resp)`` may keep a response. Stops at ``deadline`` (monotonic)."""
    latencies, errors, samples = [], collections.Counter(), {}
    state = {"next": 0, "done": 0}
    connections = [Connection(base) for _ in range(concurrency)]

    async def worker(client):  # one connection each, like --concurrency clients
        while state["next"] < n and time.monotonic() < deadline:
            i = state["next"]
            state["next"] += 1
            t0 = time.perf_counter()
            try:
                resp = await send(client, i)
                dt = time.perf_counter() - t0
                problem = check(resp)
                if problem and problem not in samples:
                    samples[problem] = resp.text[:300]
                if not problem and keep is not None:
                    keep(i, resp)
            except Exception as exc:  # noqa: BLE001 -- every failure is counted by its type
                problem = type(exc).__name__
                samples.setdefault(problem, str(exc)[:300])
            state["done"] += 1
            if problem:
                errors[problem] += 1
            else:
                latencies.append(dt)

    start, cpu = time.perf_counter(), time.process_time()
    tasks = [asyncio.create_task(worker(c)) for c in connections]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        print(f"  {name}: deadline reached; unanswered requests cancelled", flush=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    for c in connections:
        await c.close()
    row = summary(name, n, latencies, errors, state["done"], wall, samples)
    row["client_cpu_pct"] = round(100 * cpu / wall, 1) if wall > 0 else None  # of one core
    return row


def search_check(expected: int, took: list | None = None):
    """Checks a search answer; collects its ``took_ms`` (the search in the worker thread) in ``took``."""
    def check(resp: Response):
        if not 200 <= resp.status_code < 300:
            return f"HTTP {resp.status_code}"
        try:
            body = resp.json()
        except ValueError:
            return "bad JSON"
        if not isinstance(body, dict) or len(body.get("results", ())) != expected:
            return "wrong result count"
        if took is not None:
            took.append(body["took_ms"])
        return None
    return check


def health_check(resp: Response):
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}"
    try:
        return None if resp.json().get("status") == "ok" else "bad body"
    except (ValueError, AttributeError):
        return "bad JSON"


def in_process(idx: str, ids: list, k: int, deadline: float) -> tuple[list, dict]:
    """The id searches on the index opened in this process, one at a time, with FAISS's own number of
    OpenMP threads and (when that is more) with one; (phase rows, facts)."""
    start = time.perf_counter()
    index = HammingIndex.open(idx)
    open_s = time.perf_counter() - start
    start = time.perf_counter()
    index.search_ids([ids[0]], k)  # builds the searcher (not timed below)
    first_s = time.perf_counter() - start
    threads = faiss.omp_get_max_threads()
    rows, results = [], {}
    for n_threads in [threads] + ([1] if threads > 1 else []):
        faiss.omp_set_num_threads(n_threads)
        latencies, done = [], 0
        start = time.perf_counter()
        for i, item_id in enumerate(ids):
            if time.monotonic() >= deadline:
                break
            t0 = time.perf_counter()
            found = index.search_ids([item_id], k)
            latencies.append(time.perf_counter() - t0)
            done += 1
            if i < CHECKED and n_threads == threads:
                results[i] = [(str(a), int(d)) for a, d in zip(found.ids[0], found.distances[0])]
        wall = time.perf_counter() - start
        name = f"in-process search_ids, {n_threads} FAISS thread{'s' if n_threads > 1 else ''}"
        rows.append(summary(name, len(ids), latencies, collections.Counter(), done, wall))
    faiss.omp_set_num_threads(threads)
    return rows, dict(open_s=round(open_s, 3), first_search_s=round(first_s, 3), faiss_threads=threads,
                      results=results)


def route_stats(stats, route: str):
    """The entry of one route (``"POST /search"``) in ``GET /stats``'s per-route figures, or None."""
    if not isinstance(stats, dict):
        return None
    for group in ("requests", "routes"):
        if isinstance(stats.get(group), dict) and isinstance(stats[group].get(route), dict):
            return stats[group][route]
    return None


def latency_of(entry, q: str):
    """A route entry's ``p50_ms``/``p99_ms``, or None."""
    value = entry.get(f"{q}_ms") if isinstance(entry, dict) else None
    return value if isinstance(value, (int, float)) else None


async def client_phases(args, base: str, ids: list, pngs: list, deadline: float, expected: int) -> dict:
    k = args.k
    out, kept = {}, {}

    def keep(i, resp):
        if i < CHECKED:
            kept[i] = [(str(r["id"]), int(r["distance"])) for r in resp.json()["results"]]

    async def by_id(client, i):
        return await client.post_json(f"/search?k={k}", {"id": ids[i]})

    async def upload(client, i):
        name, data = pngs[i % len(pngs)]
        return await client.post_files(f"/search?k={k}", "image", name, data, "image/png")

    async def health(client, i):
        return await client.get("/health")

    async def add(client, i):
        name, data = pngs[i % len(pngs)]
        return await client.post_files("/items", "images", name, data, "image/png", fields={"ids": f"load-add-{i}"})

    async def delete(client, i):
        return await client.request("DELETE", f"/items/load-add-{i}")

    def status_is(code):
        return lambda resp: None if resp.status_code == code else f"HTTP {resp.status_code}"

    client = Connection(base)
    warm = {}
    for name, fn, check in (("first search by id", by_id, search_check(expected)),
                            ("first search by upload", upload, search_check(min(k, args.count)))):
        t0 = time.perf_counter()
        try:
            resp = await fn(client, 0)
            status, problem = resp.status_code, check(resp)
            body = resp.text[:300] if problem else None
        except Exception as exc:  # noqa: BLE001 -- reported, and the phases below still run
            status, problem, body = None, type(exc).__name__, str(exc)[:300]
        warm[name] = dict(ms=round((time.perf_counter() - t0) * 1e3, 1), status=status, problem=problem, body=body)
        print(f"  {name}: {warm[name]['ms']:.1f} ms, HTTP {status}" + (f" ({problem}: {body})" if problem else ""),
              flush=True)
    out["warmup"] = warm

    async def stats():
        fresh = Connection(base)  # the service closes a connection left idle longer than its keep-alive
        try:
            resp = await fresh.get("/stats")
            return resp.json() if resp.status_code == 200 else {"status": resp.status_code, "body": resp.text[:300]}
        except Exception as exc:  # noqa: BLE001
            return {"exception": f"{type(exc).__name__}: {exc}"}
        finally:
            await fresh.close()

    rows, took = [], {"id": [], "upload": []}
    for name, n, send, check, keep_fn, concurrency in (
            ("search by id", args.searches, by_id, search_check(expected, took["id"]), keep, args.concurrency),
            ("search by upload", args.uploads, upload, search_check(min(k, args.count), took["upload"]), None,
             args.concurrency),
            ("GET /health", args.searches, health, health_check, None, args.concurrency),
            # each change is saved (fsynced) and its searcher rebuilt before the answer: one at a time
            ("add one image (POST /items)", args.adds, add, status_is(201), None, 1),
            ("delete it (DELETE /items/{id})", args.adds, delete, status_is(200), None, 1)):
        print(f"  {name}: {n:,} requests, concurrency {concurrency} ...", flush=True)
        rows.append(await http_phase(name, base, n, concurrency, send, check, deadline, keep_fn))
        if name == "search by id":
            out["stats_after_id_searches"] = await stats()
    out["stats_end"] = await stats()
    out["rows"], out["kept"] = rows, kept
    out["took_ms"] = {kind: {q: round(float(np.percentile(v, q)), 3) for q in (50, 99)} if v else None
                      for kind, v in took.items()}
    return out


# ---- report ---------------------------------------------------------------------------------------
def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def table(rows: list) -> str:
    lines = ["| phase | requests | ok | errors | not sent | wall s | req/s | p50 ms | p90 ms | p99 ms | max ms "
             "| client CPU |", "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['phase']} | {r['requests']:,} | {r['ok']:,} | {r['errors']:,} | {r['not_sent']:,} "
                     f"| {r['wall_s']:.2f} | {fmt(r['throughput'], '.0f')} | {fmt(r['p50_ms'], '.2f')} "
                     f"| {fmt(r['p90_ms'], '.2f')} | {fmt(r['p99_ms'], '.2f')} | {fmt(r['max_ms'], '.2f')} "
                     f"| {fmt(r.get('client_cpu_pct'), '.0f')}{'%' if r.get('client_cpu_pct') is not None else ''} |")
    return "\n".join(lines) + "\n"


def markdown(res: dict) -> str:
    f, s, r = res["facts"], res["setup"], res["ratios"]
    lines = [
        "# `schn serve` under load (loopback)", "",
        f"```sh\n{f['command']}\n```", "",
        f"Date {f['date']}; machine: {f['machine']} (client and service share them; load average at start "
        f"{f['load_average']}; OMP_NUM_THREADS {f['omp_num_threads'] or 'unset'}); "
        f"{s['count']:,} items ({s['database_items']:,} digits database items, "
        f"{s['stored_images']:,} with stored images, + {s['synthetic_items']:,} synthetic clustered codes, "
        f"flip {f['flip']}); {f['bits']} bits; k={f['k']}; concurrency {f['concurrency']}; "
        f"request timeout {REQUEST_TIMEOUT_S:.0f} s.", "",
        f"Service startup (process start until `GET /health` answered): {res['startup_s']:.1f} s; "
        f"memory after startup {res['memory_startup']['rss_mib']:,} MiB resident, at the end "
        f"{res['memory_end']['rss_mib']:,} MiB (peak {res['memory_end']['peak_rss_mib']:,} MiB). "
        + "; ".join(f"{k}: {v['ms']:.0f} ms" for k, v in res["warmup"].items()) + ".", "",
        table(res["rows"]),
        "Client CPU: the load generator's own CPU time during the phase, in % of one core.", "",
    ]
    errs = [f"{row['phase']}: " + ", ".join(f"{k} x{v}" for k, v in row["error_types"].items())
            for row in res["rows"] if row["error_types"]]
    lines.append("Errors: " + ("; ".join(errs) if errs else "none") + ".")
    lines.append("")
    lines.append(f"- search by id throughput / health throughput: {fmt(r['search_vs_health_throughput'], '.3f')}")
    lines.append(f"- search by upload throughput / health throughput: {fmt(r['upload_vs_health_throughput'], '.3f')}")
    threads = res["in_process"]["faiss_threads"]
    lines.append(f"- in-process `search_ids` p50 {fmt(r['in_process_p50_ms'], '.3f')} ms ({threads} FAISS "
                 f"thread{'s' if threads > 1 else ''}; "
                 f"{fmt(r['in_process_1thread_p50_ms'], '.3f')} ms with 1) vs HTTP search by id p50 "
                 f"{fmt(r['http_p50_ms'], '.2f')} ms: HTTP / in-process = {fmt(r['http_vs_in_process_p50'], '.1f')}x "
                 f"({fmt(r['http_vs_in_process_1thread_p50'], '.1f')}x)")
    lines.append(f"- with {f['concurrency']} requests always in flight, the mean latency is concurrency / "
                 f"throughput = {fmt(r['queueing_ms'], '.1f')} ms (Little's law), whatever one request costs; "
                 "the service's own time per request (`GET /stats`) is the last line")
    lines.append(f"- HTTP id-search throughput (concurrency {f['concurrency']}) / in-process one-at-a-time "
                 f"throughput: {fmt(r['http_vs_in_process_throughput'], '.3f')} "
                 f"({fmt(r['http_vs_in_process_1thread_throughput'], '.3f')} with 1 FAISS thread)")
    lines.append(f"- first {res['checked']['compared']} id searches: HTTP results identical to in-process: "
                 f"{res['checked']['identical']}/{res['checked']['compared']}")
    ss = res["server_side"]
    lines.append(f"- service's own latency of `POST /search` (`GET /stats`, last 10,000 requests): after the id "
                 f"searches p50 {fmt(ss['after_id_p50_ms'], '.2f')} ms, p99 {fmt(ss['after_id_p99_ms'], '.2f')} ms; "
                 f"at the end (id and upload searches) p50 {fmt(ss['end_p50_ms'], '.2f')} ms, "
                 f"p99 {fmt(ss['end_p99_ms'], '.2f')} ms ({fmt(ss['end_count'], ',')} requests, "
                 f"{fmt(ss['end_errors'], ',')} errors counted by the service); it includes the wait for a "
                 "worker thread")
    for kind, name in (("id", "search by id"), ("upload", "search by upload")):
        t = res["took_ms"][kind]
        if t:
            lines.append(f"- {name}, the work in the worker thread (`took_ms` of the answers: "
                         f"{'encoding, ' if kind == 'upload' else ''}search, result rows): "
                         f"p50 {t[50]:.2f} ms, p99 {t[99]:.2f} ms")
    return "\n".join(lines) + "\n"


def ratio(a, b):
    return round(a / b, 4) if a is not None and b else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000,
                   help="items in the index in all (digits database + synthetic)")
    p.add_argument("--searches", type=int, default=10_000, help="searches by id (and GET /health requests)")
    p.add_argument("--uploads", type=int, default=2_000, help="searches by image upload")
    p.add_argument("--adds", type=int, default=20, help="images added one at a time, then deleted")
    p.add_argument("--worker-threads", type=int, default=None, help="passed to schn serve (default: its own)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--work", default="benchmarks/.work/serve_load", help="work folder (reused when the size matches)")
    p.add_argument("--deadline", type=float, default=1800.0, help="seconds from the start after which unanswered "
                   "requests are cancelled (counted as not sent)")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--flip", type=float, default=0.1, help="per-bit flip probability of synthetic codes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/serve_load.json")
    p.add_argument("--md", default="benchmarks/results/serve_load.md")
    args = p.parse_args()
    if min(args.items, args.searches, args.uploads, args.concurrency, args.k, args.bits) < 1:
        p.error("--items, --searches, --uploads, --concurrency, --k and --bits must be at least 1")
    t_start = time.monotonic()
    deadline = t_start + args.deadline
    work = Path(args.work)
    if not work.is_absolute():
        work = ROOT / work
    facts = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), machine=f"{os.cpu_count()} CPU cores",
                 cpus=os.cpu_count(), load_average=round(os.getloadavg()[0], 2), host=HOST, items=args.items,
                 bits=args.bits, k=args.k, concurrency=args.concurrency, searches=args.searches, uploads=args.uploads,
                 flip=args.flip, seed=args.seed, deadline_s=args.deadline,
                 omp_num_threads=os.environ.get("OMP_NUM_THREADS"), faiss_threads=faiss.omp_get_max_threads(),
                 command=" ".join([".venv/bin/python", "benchmarks/serve_load.py", *sys.argv[1:]]))
    print(", ".join(f"{k} {v}" for k, v in facts.items()), flush=True)

    setup = prepare(args, work)
    args.count = setup["count"]
    idx = setup["index"]
    expected = min(args.k, args.count - 1)  # a search by id leaves the item itself out
    index = HammingIndex.open(idx, verify=False)
    rng = np.random.default_rng([args.seed, 1])
    ids = [str(x) for x in index.ids[rng.integers(0, len(index), args.searches)]]
    del index
    pngs = digit_pngs()

    proc, res = None, dict(facts=facts, setup=setup)
    try:
        extra = ["--worker-threads", str(args.worker_threads)] if args.worker_threads else []
        port = free_port()
        proc, startup_s = start_service(idx, port, work / "serve.log", extra)
        base = f"http://{HOST}:{port}"
        res["startup_s"] = round(startup_s, 2)
        res["memory_startup"] = process_tree_kib(proc.pid)
        print(f"service up in {startup_s:.1f} s at {base}, {res['memory_startup']['rss_mib']:,} MiB resident",
              flush=True)
        client = asyncio.run(client_phases(args, base, ids, pngs, deadline, expected))
        res["memory_end"] = process_tree_kib(proc.pid)
    finally:
        stop_service(proc)
    res.update(warmup=client["warmup"], stats_after_id_searches=client["stats_after_id_searches"],
               stats_end=client["stats_end"], took_ms=client["took_ms"])
    rows = client["rows"]
    print("  in-process search_ids ...", flush=True)
    refs, ref_facts = in_process(idx, ids, args.k, deadline)
    rows.extend(refs)
    ref, one = refs[0], refs[-1]
    res["rows"], res["in_process"] = rows, {k: v for k, v in ref_facts.items() if k != "results"}

    kept, ref_results = client["kept"], ref_facts["results"]
    both = sorted(set(kept) & set(ref_results))
    res["checked"] = dict(compared=len(both), identical=sum(kept[i] == ref_results[i] for i in both))
    by = {r["phase"]: r for r in rows}
    health, search, upload = by["GET /health"], by["search by id"], by["search by upload"]
    res["ratios"] = dict(
        search_vs_health_throughput=ratio(search["throughput"], health["throughput"]),
        upload_vs_health_throughput=ratio(upload["throughput"], health["throughput"]),
        in_process_p50_ms=ref["p50_ms"], in_process_1thread_p50_ms=one["p50_ms"], http_p50_ms=search["p50_ms"],
        http_vs_in_process_p50=ratio(search["p50_ms"], ref["p50_ms"]),
        http_vs_in_process_1thread_p50=ratio(search["p50_ms"], one["p50_ms"]),
        http_vs_in_process_throughput=ratio(search["throughput"], ref["throughput"]),
        http_vs_in_process_1thread_throughput=ratio(search["throughput"], one["throughput"]),
        queueing_ms=round(1e3 * args.concurrency / search["throughput"], 2) if search["throughput"] else None)
    after = route_stats(res["stats_after_id_searches"], "POST /search")
    end = route_stats(res["stats_end"], "POST /search")
    res["server_side"] = dict(after_id_p50_ms=latency_of(after, "p50"), after_id_p99_ms=latency_of(after, "p99"),
                              end_p50_ms=latency_of(end, "p50"), end_p99_ms=latency_of(end, "p99"),
                              end_count=(end or {}).get("count"), end_errors=(end or {}).get("errors"))
    res["total_s"] = round(time.monotonic() - t_start, 1)

    print("\n" + table(rows))
    for r in rows:
        if r["error_types"]:
            print(f"errors in {r['phase']}: {r['error_types']}; samples: {r['error_samples']}")
    print(json.dumps(res["ratios"]), json.dumps(res["server_side"]), json.dumps(res["checked"]), sep="\n")
    write_json(args.out, res)
    write_text(args.md, markdown(res))
    print(f"wrote {args.out} and {args.md}; total {res['total_s']:.0f} s", flush=True)
    failed = sum(r["errors"] + r["not_sent"] for r in rows) or res["checked"]["identical"] != res["checked"]["compared"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
