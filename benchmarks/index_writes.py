"""Durable one-item writes to a local index: the journal (now) against a full rewrite (before).

For each database size: random 64-bit codes (generated in chunks) with integer ids, saved once.
Then, timed one at a time, each made durable before the next:
- Python API: ``index.add(one); index.save()`` and ``index.delete([id]); index.save()`` on an index
  opened from disk (AFTER: one fsynced journal frame), and the same with ``save(compact=True)``
  (BEFORE: the whole index rewritten, as every save did before the journal);
- the service's code path (``SearchService``, no image decoding): a copy of the snapshot, the
  add, ``SearchService._commit`` (journal + the new snapshot's searcher); ``SearchService.delete``.
  BEFORE: the same with a full rewrite and the base searcher rebuilt, as ``_commit`` did;
- search throughput (single queries, k = 10, one thread) of the service's snapshot, alone and
  while another thread streams ``--add-rate`` adds per second through the service's path.

    .venv/bin/python benchmarks/index_writes.py --n 1000000 10000000

Prints one Markdown table; the index folders live in a temporary folder, removed at the end.
"""
from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from schn.index import HammingIndex
from schn.serve.service import SearchService

CHUNK = 1 << 20


def build(folder: Path, n: int, bits: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    width = bits // 8
    codes = np.empty((n, width), dtype=np.uint8)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        codes[start:stop] = rng.integers(0, 256, (stop - start, width), dtype=np.uint8)
    index = HammingIndex(bits)
    index.add(codes, ids=np.arange(n, dtype=np.int64))
    start = time.perf_counter()
    index.save(folder)
    return time.perf_counter() - start


def timed(fn, reps: int) -> np.ndarray:
    out = np.empty(reps)
    for i in range(reps):
        start = time.perf_counter()
        fn(i)
        out[i] = time.perf_counter() - start
    return out * 1000


def summary(ms: np.ndarray) -> str:
    return f"{np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f}"


def api_writes(folder: Path, bits: int, reps: int, full: bool, next_id: int, gone: int):
    index = HammingIndex.open(folder, verify=False)
    rng = np.random.default_rng(1)
    one = lambda: rng.integers(0, 256, (1, bits // 8), dtype=np.uint8)  # noqa: E731

    def add(i):
        index.add(one(), ids=[next_id + i])
        index.save(compact=full)

    def delete(i):
        index.delete([gone + i])
        index.save(compact=full)

    adds, deletes = timed(add, reps), timed(delete, reps)
    if not full:
        index.compact()  # leave a plain base for the next measurement
    return adds, deletes


def service_add(service: SearchService, code: np.ndarray, item_id: int, full: bool) -> None:
    """SearchService.add after encoding and storing images: copy, add, commit."""
    with service._write_lock:
        index = copy.copy(service.index)
        index.add(code, ids=[item_id])
        if full:  # what _commit did before the journal: a full rewrite and a new base searcher
            index.save(compact=True)
            service.index = index.warm()
        else:
            service._commit(index, [])


def service_writes(service: SearchService, bits: int, reps: int, full: bool, next_id: int, gone: int):
    rng = np.random.default_rng(2)
    adds = timed(lambda i: service_add(service, rng.integers(0, 256, (1, bits // 8), dtype=np.uint8), next_id + i,
                                       full), reps)
    if full:
        def delete(i):
            with service._write_lock:
                index = copy.copy(service.index)
                index.delete([gone + i])
                index.save(compact=True)
                service.index = index.warm()
    else:
        def delete(i):
            service.delete(gone + i)
    return adds, timed(delete, reps)


def search_rate(service: SearchService, bits: int, seconds: float, add_rate: float, next_id: int) -> tuple[float, int]:
    """Single queries per second (k=10) for ``seconds``, while adds stream in at ``add_rate``/s."""
    stop, added = threading.Event(), [0]
    rng = np.random.default_rng(3)

    def writer():
        period, due = 1.0 / add_rate, time.perf_counter()
        while not stop.is_set():
            service_add(service, rng.integers(0, 256, (1, bits // 8), dtype=np.uint8), next_id + added[0], False)
            added[0] += 1
            due += period
            time.sleep(max(0.0, due - time.perf_counter()))

    thread = threading.Thread(target=writer) if add_rate else None
    if thread:
        thread.start()
    queries = np.random.default_rng(4).integers(0, 256, (4096, bits // 8), dtype=np.uint8)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        service.index.search(queries[done % len(queries)][None], 10)
        done += 1
    took = time.perf_counter() - start
    stop.set()
    if thread:
        thread.join()
    return done / took, added[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--writes", type=int, default=200, help="journaled writes timed per kind")
    p.add_argument("--full-writes", type=int, default=5, help="full-rewrite writes timed per kind (slow)")
    p.add_argument("--search-seconds", type=float, default=5.0)
    p.add_argument("--add-rate", type=float, default=100.0)
    p.add_argument("--searcher", default="auto")
    args = p.parse_args()
    rows = []
    for n in args.n:
        tmp = Path(tempfile.mkdtemp(prefix="schn-writes-"))
        try:
            folder = tmp / "idx"
            took = build(folder, n, args.bits, seed=n)
            print(f"n={n:,}: built and saved in {took:.1f} s", flush=True)
            for label, full, reps in (("journal (after)", False, args.writes), ("full rewrite (before)", True,
                                                                                 args.full_writes)):
                adds, deletes = api_writes(folder, args.bits, reps, full, next_id=n + (0 if full else 10**8),
                                           gone=10_000 if full else 0)
                rows.append((n, "Python API", label, "add", summary(adds), reps))
                rows.append((n, "Python API", label, "delete", summary(deletes), reps))
                print(rows[-2], rows[-1], flush=True)
            service = SearchService(folder, searcher=args.searcher)
            for label, full, reps in (("journal (after)", False, args.writes), ("full rewrite (before)", True,
                                                                                 args.full_writes)):
                adds, deletes = service_writes(service, args.bits, reps, full, next_id=n + (2 if full else 3) * 10**8,
                                               gone=30_000 if full else 20_000)
                rows.append((n, "SearchService", label, "add", summary(adds), reps))
                rows.append((n, "SearchService", label, "delete", summary(deletes), reps))
                print(rows[-2], rows[-1], flush=True)
            alone, _ = search_rate(service, args.bits, args.search_seconds, 0, 0)
            busy, added = search_rate(service, args.bits, args.search_seconds, args.add_rate, 4 * 10**8)
            rows.append((n, "SearchService", f"searches/s alone: {alone:,.0f}", f"with {added / args.search_seconds:.0f} "
                         f"adds/s: {busy:,.0f}", "", ""))
            print(rows[-1], flush=True)
            service.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n| items | path | write | op | p50 ms | p99 ms | writes timed |\n|---|---|---|---|---|---|---|")
    for n, path, label, op, stats, reps in rows:
        if stats:
            print(f"| {n:,} | {path} | {label} | {op} | {stats} | {reps} |")
        else:
            print(f"| {n:,} | {path} | search throughput (k=10, one query at a time) | {label}; {op} | | | |")


if __name__ == "__main__":
    main()
