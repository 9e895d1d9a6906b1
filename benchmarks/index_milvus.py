"""The Milvus backend (Milvus Lite, BIN_FLAT, HAMMING) against FAISS IndexBinaryFlat, same run.

Insert time, single-query latency and batch queries/s of ``MilvusIndex.search`` (exact, ties by
id) next to plain FAISS flat on the same clustered codes, and a check that Milvus's results equal
the local engine's. Milvus Lite is Milvus's embedded test build; a server shards and replicates,
so these figures say what the backend costs on one machine, not what a cluster does.

    .venv/bin/python benchmarks/index_milvus.py --n 100000 1000000 --bits 64 --k 1 10 100
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from index_search import make_codes, random_codes
from schn.index import HammingIndex, create_index_backend


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--single-queries", type=int, default=30)
    p.add_argument("--batch-queries", type=int, default=200)
    args = p.parse_args()
    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}, faiss threads {faiss.omp_get_max_threads()}")
    print("| n | k | backend | single median ms | speed-up vs faiss flat (single) | batch q/s | speed-up (batch) |")
    print("|---|---|---|---|---|---|---|")
    ok = True
    for n in args.n:
        rng = np.random.default_rng([0, n])
        centres = random_codes(rng, 300, args.bits)
        codes = make_codes(rng, n, args.bits, "clustered", centres, 0.05)
        queries = make_codes(rng, args.single_queries + args.batch_queries, args.bits, "clustered", centres, 0.05)
        single_q, batch_q = queries[:args.single_queries], queries[args.single_queries:]
        flat = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        flat.add(codes)
        local = HammingIndex(args.bits)
        local.add(codes)
        with tempfile.TemporaryDirectory() as tmp:
            milvus = create_index_backend("milvus", str(Path(tmp) / "bench.db"), bits=args.bits, id_kind="int")
            insert_s, _ = timed(lambda: milvus.add(codes, ids=np.arange(n)))
            flush_s, _ = timed(milvus.save)
            print(f"<!-- n={n:,}: Milvus Lite insert {insert_s:.1f} s ({n / insert_s:,.0f} rows/s), flush {flush_s:.1f} s -->")
            for k in args.k:
                milvus.search(single_q[:1], k)  # warm
                lat = {"faiss flat": [], "milvus": []}
                for q in single_q:
                    lat["faiss flat"].append(timed(lambda: flat.search(q[None], k))[0])
                    lat["milvus"].append(timed(lambda: milvus.search(q[None], k))[0])
                flat_batch, _ = timed(lambda: flat.search(batch_q, k))
                milvus_batch, found = timed(lambda: milvus.search(batch_q, k))
                want = local.search(batch_q, k, searcher="faiss")
                ok &= bool((found.ids == want.ids).all() and (found.distances == want.distances).all())
                base = np.median(lat["faiss flat"])
                for name, seconds in (("faiss flat", flat_batch), ("milvus", milvus_batch)):
                    med = np.median(lat[name])
                    print(f"| {n:,} | {k} | {name} | {1e3 * med:.3f} | {base / med:.2f}x | "
                          f"{len(batch_q) / seconds:,.0f} | {flat_batch / seconds:.2f}x |", flush=True)
    print(f"identical to the local engine: {'yes' if ok else 'no'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
