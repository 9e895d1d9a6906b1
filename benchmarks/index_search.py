"""Exact Hamming k-NN search: schn's searchers (src/schn/index/) against FAISS IndexBinaryFlat.

For uniform random codes (the worst case for multi-index hashing) and clustered codes (a few
hundred random centres, each bit flipped with a small probability, like learned codes), at each
code length, database size and k: latency and queries/s of one query at a time (what a service
sees) and of one batch call, each as a speed-up over plain FAISS ``IndexBinaryFlat.search``
("faiss-raw", the reference; it breaks distance ties its own way) measured in the same run;
build time and bytes of memory per item. Backends: ``faiss`` and ``mih`` are schn's searchers
followed by ``select_knn`` (exact, ties broken by id), ``auto`` schn's default (multi-index hashing
within a work budget per query, else the flat scan), ``numpy`` the brute-force reference
(a few single queries only). Every result is checked in the same run: mih, faiss and numpy must
give identical rows and distances, and faiss-raw the same distance lists; exit status 1 if not.

    .venv/bin/python benchmarks/index_search.py --bits 64 128 --n 1000000 10000000 --k 1 10 100 \\
        --data uniform clustered --md benchmarks/results/index_search.md

Rows are written (atomically, after every configuration) to --out as JSON. Run it on an idle
machine: while another process keeps a core busy, FAISS's OpenMP threads wait on each other and a
single 1M-row query took ~140 ms instead of ~1 ms (``--threads 1`` avoids that, at the cost of
FAISS's batch parallelism). Uniform 128-bit codes at 10M are the slow part for multi-index hashing.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import sys
import time

import faiss
import numpy as np

from schn.codes import packed_width
from schn.fileio import write_json, write_text
from schn.index import create_searcher
from schn.index.searchers import select_knn

CHUNK = 1 << 18  # rows generated at a time


def random_codes(rng, n: int, bits: int) -> np.ndarray:
    """Uniform random packed codes; padding bits (if bits % 8) are 0."""
    codes = rng.integers(0, 256, (n, packed_width(bits)), dtype=np.uint8)
    codes[:, -1] &= np.uint8((0xFF << (-bits % 8)) & 0xFF)
    return codes


def noisy_copies(rng, centres: np.ndarray, n: int, bits: int, flip: float) -> np.ndarray:
    """n codes, each a random centre with every bit flipped with probability ``flip``."""
    noise = np.packbits(rng.random((n, bits), dtype=np.float32) < flip, axis=1)
    return centres[rng.integers(0, len(centres), n)] ^ noise


def make_codes(rng, n, bits, data, centres, flip) -> np.ndarray:
    out = np.empty((n, packed_width(bits)), dtype=np.uint8)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        uniform = data == "uniform"
        out[start:start + m] = random_codes(rng, m, bits) if uniform else noisy_copies(rng, centres, m, bits, flip)
    return out


def build(name: str, codes: np.ndarray, bits: int):
    start = time.perf_counter()
    if name == "faiss-raw":
        index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        index.add(codes)
        memory = index.ntotal * index.code_size
    else:
        # ids are the rows here, so the tie order is the identity (an index passes its id order)
        index = create_searcher(name, codes, bits, tie_order=np.arange(len(codes)))
        memory = index.memory_bytes()
    return index, time.perf_counter() - start, memory / len(codes)


def searcher_fn(name: str, index, k: int, ids: np.ndarray):
    """queries -> (rows, distances), both (nq, k)."""
    if name == "faiss-raw":
        def search(queries):
            dist, rows = index.search(queries, k)
            return rows, dist
        return search
    return lambda queries: select_knn(index.knn(queries, k), k, ids)


def single(fn, queries, warm):
    fn(warm[None])
    times, rows, dist = [], [], []
    for q in queries:
        start = time.perf_counter()
        r, d = fn(q[None])
        times.append(time.perf_counter() - start)
        rows.append(r)
        dist.append(d)
    return np.array(times), np.vstack(rows), np.vstack(dist)


def batch(fn, queries, warm):
    fn(warm[None])
    start = time.perf_counter()
    rows, dist = fn(queries)
    return time.perf_counter() - start, rows, dist


def identical(res: dict, nq_numpy: int) -> bool:
    """mih and auto == faiss (rows and distances); faiss-raw has the same distances; numpy == faiss on its queries."""
    ok = True
    for mode in ("single", "batch"):
        f_rows, f_dist = res["faiss", mode]
        for name in ("mih", "auto"):
            m_rows, m_dist = res[name, mode]
            ok &= np.array_equal(f_rows, m_rows) and np.array_equal(f_dist, m_dist)
        ok &= np.array_equal(res["faiss-raw", mode][1], f_dist)
    if ("numpy", "single") in res:
        n_rows, n_dist = res["numpy", "single"]
        ok &= np.array_equal(n_rows, res["faiss", "single"][0][:nq_numpy])
        ok &= np.array_equal(n_dist, res["faiss", "single"][1][:nq_numpy])
    return bool(ok)


def run_config(args, data: str, bits: int, n: int, rows_out: list) -> bool:
    rng = np.random.default_rng([args.seed, bits, n, ["uniform", "clustered"].index(data)])
    centres = random_codes(rng, args.centres, bits)
    start = time.perf_counter()
    codes = make_codes(rng, n, bits, data, centres, args.flip)
    queries = make_codes(rng, 1 + args.single_queries + args.batch_queries, bits, data, centres, args.flip)
    warm, single_q, batch_q = queries[0], queries[1:1 + args.single_queries], queries[1 + args.single_queries:]
    ids = np.arange(n, dtype=np.int64)
    print(f"\n== {data} {bits} bits, n={n:,}: generated in {time.perf_counter() - start:.1f} s, "
          f"codes {codes.shape[1]} bytes/item", flush=True)
    backends = ["faiss-raw", "faiss", "mih", "auto"] + (["numpy"] if args.numpy_queries else [])
    built = {}
    for name in backends:
        built[name] = build(name, codes, bits)
        extra = f" (m={built[name][0].m} substrings)" if name == "mih" else ""
        print(f"  build {name:9s} {built[name][1]:8.2f} s, {built[name][2]:6.1f} bytes/item{extra}", flush=True)
    all_ok = True
    for k in args.k:
        res, times = {}, {}
        for name in backends:
            fn = searcher_fn(name, built[name][0], k, ids)
            qs = single_q[:args.numpy_queries] if name == "numpy" else single_q
            lat, r, d = single(fn, qs, warm)
            times[name, "single"], res[name, "single"] = lat, (r, d)
            if name != "numpy":
                seconds, r, d = batch(fn, batch_q, warm)
                times[name, "batch"], res[name, "batch"] = seconds, (r, d)
        ok = identical(res, args.numpy_queries)
        all_ok &= ok
        raw_lat, raw_batch = times["faiss-raw", "single"], times["faiss-raw", "batch"] / len(batch_q)
        for name in backends:
            lat = times[name, "single"]
            row = dict(data=data, bits=bits, n=n, k=k, backend=name,
                       single_median_ms=1e3 * float(np.median(lat)), single_p95_ms=1e3 * float(np.percentile(lat, 95)),
                       single_qps=1 / float(lat.mean()), single_speedup=float(raw_lat.mean() / lat.mean()),
                       single_speedup_median=float(np.median(raw_lat) / np.median(lat)),
                       single_queries=len(lat), batch_qps=None, batch_speedup=None, batch_queries=None,
                       build_s=built[name][1], bytes_per_item=built[name][2], codes_bytes_per_item=codes.shape[1],
                       identical=ok)
            if (name, "batch") in times:
                per_query = times[name, "batch"] / len(batch_q)
                row.update(batch_qps=1 / per_query, batch_speedup=raw_batch / per_query, batch_queries=len(batch_q))
            rows_out.append(row)
            batch_txt = (f"batch {row['batch_qps']:9.0f} q/s ({row['batch_speedup']:6.2f}x)"
                         if row["batch_qps"] else "batch -")
            print(f"  k={k:<3d} {name:9s} single median {row['single_median_ms']:8.3f} ms, "
                  f"p95 {row['single_p95_ms']:8.3f} ms, {row['single_qps']:8.0f} q/s "
                  f"({row['single_speedup_median']:6.2f}x); {batch_txt}", flush=True)
        print(f"  k={k:<3d} identical: {'yes' if ok else 'no'}", flush=True)
    return all_ok


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def markdown(rows: list) -> str:
    lines = ["| data | bits | n | k | backend | single median ms | p95 ms | single q/s | vs faiss-raw (single, median) "
             "| batch q/s | vs faiss-raw (batch) | build s | bytes/item |",
             "|" + "---|" * 13]
    for r in rows:
        lines.append(f"| {r['data']} | {r['bits']} | {r['n']:,} | {r['k']} | {r['backend']} "
                     f"| {r['single_median_ms']:.3f} | {r['single_p95_ms']:.3f} | {r['single_qps']:.0f} "
                     f"| {r['single_speedup_median']:.2f}x | {fmt(r['batch_qps'], '.0f')} "
                     f"| {fmt(r['batch_speedup'], '.2f')}{'x' if r['batch_speedup'] else ''} "
                     f"| {r['build_s']:.2f} | {r['bytes_per_item']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, nargs="+", default=[64, 128])
    p.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--data", nargs="+", choices=["uniform", "clustered"], default=["uniform", "clustered"])
    p.add_argument("--centres", type=int, default=300)
    p.add_argument("--flip", type=float, default=0.05, help="per-bit flip probability (clustered codes)")
    p.add_argument("--single-queries", type=int, default=50, help="queries searched one at a time (latency)")
    p.add_argument("--batch-queries", type=int, default=1000, help="queries searched in one call")
    p.add_argument("--numpy-queries", type=int, default=5, help="single queries for the slow NumPy reference (0: skip)")
    p.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: FAISS's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/index_search.json")
    p.add_argument("--md", default=None, help="also write the markdown table here")
    args = p.parse_args()
    args.numpy_queries = min(args.numpy_queries, args.single_queries)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    facts = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), cpus=os.cpu_count(),
                 faiss_threads=faiss.omp_get_max_threads(),
                 load_average=round(os.getloadavg()[0], 2), numpy=np.__version__, faiss=faiss.__version__,
                 command=" ".join(sys.argv))
    print(", ".join(f"{key} {value}" for key, value in facts.items()), flush=True)
    print("bytes/item: memory the backend holds beyond the index's codes (faiss-raw: its copy of the codes); "
          "speed-up = faiss-raw time / backend time, same run (single: median latencies; batch: total)", flush=True)
    if facts["load_average"] > 0.5:
        print(f"WARNING: load average {facts['load_average']}: other processes share the CPUs; FAISS's OpenMP "
              "threads then wait on each other and its single-query latency is unreliable (see --threads 1)")
    rows, all_ok, start = [], True, time.perf_counter()
    for data in args.data:
        for bits in args.bits:
            for n in args.n:
                all_ok &= run_config(args, data, bits, n, rows)
                gc.collect()  # the configuration's codes and indexes are gone with its frame
                write_json(args.out, dict(facts, identical=all_ok, rows=rows))
    table = markdown(rows)
    print(f"\n{table}\nidentical: {'yes' if all_ok else 'no'}; total {time.perf_counter() - start:.0f} s")
    if args.md:
        write_text(args.md, table)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
