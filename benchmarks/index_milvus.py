"""The Milvus backend on Milvus Lite and on a real Milvus server, beside the local engine and FAISS.

Per backend, on the same clustered codes: insert rows/s (``add`` of all n items, then the flush of
``save``), single-query latency and queries/s (one query per call, k given), batch queries/s (all
batch queries in one call), and a check that every Milvus backend returns exactly the local
engine's results (ties by id). The server is PyPI's ``milvus`` 2.3.5 standalone build
(``tests/milvus_standalone.py``: free ports, a temporary folder, defaults otherwise), started
by this script on 127.0.0.1 and measured over loopback gRPC; it shares the machine's cores with
this client. One machine, one server process: not what a sharded cluster serves.

    cd benchmarks && ../.venv/bin/python index_milvus.py --n 1000000 --k 10
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import faiss
import numpy as np

from index_search import make_codes, random_codes
from schn.index import HammingIndex, create_index_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from milvus_standalone import milvus_server, wait_sealed  # noqa: E402

BACKENDS = ("faiss flat", "local", "milvus lite", "milvus server", "milvus server ivf")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


class FaissFlat:
    """Plain FAISS IndexBinaryFlat: the floor (no ids, no tie order)."""

    def __init__(self, codes):
        self.flat = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        self.flat.add(codes)

    def search(self, queries, k):
        return self.flat.search(queries, k)


class Server:
    """The Milvus server, started at its first use and stopped when ``stack`` closes."""

    def __init__(self, stack: ExitStack, folder: Path):
        self.stack, self.folder, self.uri = stack, folder, None

    def start(self) -> str:
        if self.uri is None:
            seconds, server = timed(lambda: self.stack.enter_context(milvus_server(self.folder)))
            self.uri = server.uri
            print(f"<!-- Milvus server started in {seconds:.1f} s at {self.uri} -->", flush=True)
        return self.uri


def build(name, codes, bits, server: Server, tmp: Path, nlist: int):
    """The backend ``name`` holding ``codes`` (ids 0..n-1), and its insert facts."""
    n = len(codes)
    if name == "faiss flat":
        seconds, index = timed(lambda: FaissFlat(codes))
        return index, {"insert_s": seconds}
    if name == "local":
        index = HammingIndex(bits)
        seconds, _ = timed(lambda: index.add(codes))
        index.search(codes[:1], 1)  # builds the searcher
        return index, {"insert_s": seconds}
    if name == "milvus lite":
        location, options = str(tmp / "bench.db"), {}
    else:
        location = server.start()
        options = {"index_type": "BIN_IVF_FLAT", "nlist": nlist} if name.endswith("ivf") else {}
    index = create_index_backend("milvus", location, bits=bits, id_kind="int",
                                 collection=name.replace(" ", "_"), **options)
    insert_s, _ = timed(lambda: index.add(codes, ids=np.arange(n)))
    flush_s, _ = timed(index.save)
    facts = {"insert_s": insert_s, "flush_s": flush_s}
    if name != "milvus lite":  # searches are exact meanwhile, but slow: see wait_sealed
        facts["sealed_s"] = wait_sealed(index, timeout_s=1800)
    return index, facts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--nlist", type=int, default=1024, help="lists of the BIN_IVF_FLAT index (searches probe all)")
    p.add_argument("--single-queries", type=int, default=100)
    p.add_argument("--batch-queries", type=int, default=1000)
    args = p.parse_args()
    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}, faiss threads {faiss.omp_get_max_threads()}")
    print("| n | k | backend | insert rows/s | single median ms | single q/s | batch q/s |")
    print("|---|---|---|---|---|---|---|")
    ok = True
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        server = Server(stack, Path(tmp) / "server")
        for n in args.n:
            rng = np.random.default_rng([0, n])
            centres = random_codes(rng, 300, args.bits)
            codes = make_codes(rng, n, args.bits, "clustered", centres, 0.05)
            queries = make_codes(rng, args.single_queries + args.batch_queries, args.bits, "clustered", centres, 0.05)
            single_q, batch_q = queries[:args.single_queries], queries[args.single_queries:]
            reference = HammingIndex(args.bits)
            reference.add(codes)
            for name in args.backends:
                folder = Path(tmp) / f"{n}-{name.replace(' ', '_')}"
                folder.mkdir()
                index, facts = build(name, codes, args.bits, server, folder, args.nlist)
                notes = ", ".join(f"{key[:-2]} {value:.1f} s" for key, value in facts.items())
                print(f"<!-- n={n:,} {name}: {notes} -->", flush=True)
                for k in args.k:
                    index.search(single_q[:1], k)  # warm
                    lat = [timed(lambda: index.search(q[None], k))[0] for q in single_q]
                    batch_s, found = timed(lambda: index.search(batch_q, k))
                    if name.startswith("milvus"):
                        want = reference.search(batch_q, k, searcher="faiss")
                        ok &= bool((found.ids == want.ids).all() and (found.distances == want.distances).all())
                    print(f"| {n:,} | {k} | {name} | {n / facts['insert_s']:,.0f} | {1e3 * np.median(lat):.2f} | "
                          f"{len(lat) / sum(lat):,.0f} | {len(batch_q) / batch_s:,.0f} |", flush=True)
                if name.startswith("milvus"):
                    index.client.drop_collection(index.collection)  # frees the server's memory for the next
    print(f"Milvus results identical to the local engine's: {'yes' if ok else 'no'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
