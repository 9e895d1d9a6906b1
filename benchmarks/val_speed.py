"""Validation mAP speed: the fast stable-ties path of schn.metrics.mean_average_precision against
the general pass it replaced (schn.metrics._mean_average_precision_reference), on random codes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/val_speed.py [--queries 1000] [--database 58000]
        [--bits 32] [--classes 10] [--repeats 5] [--depths all,5000,1000] [--threads 1] [--paths]

Builds random +-1 codes (queries x database) with single-label classes and a multi-label
variant (each item carries each class with probability 0.2, at least one), then, per depth,
times old and new alternately (``--repeats`` pairs, in one process) and prints the median times,
their ratio and the largest absolute difference of the mAP values (expected 0.0). ``--threads``:
torch's threads and the new path's (validation passes torch's count); run it with the same
OMP_NUM_THREADS, which the old path's BLAS product uses. ``--paths``: instead, the new path's two
rankings against each other (the counting sort over the whole database, and the argsort of the
top only), which is where ``schn.metrics.COUNTING_MIN_FRACTION`` comes from.
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

import numpy as np

from schn import metrics as M


def labels(rng, n, k, multi):
    if not multi:
        return np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]
    lab = (rng.random((n, k)) < 0.2).astype(np.float32)
    lab[np.arange(n), rng.integers(0, k, n)] = 1  # at least one label each
    return lab


def ranking(path, threads, *args, **kw):
    """The fast path with one ranking forced: "counting" at every depth, or "sort" at every depth."""
    saved = M.COUNTING_MIN_FRACTION
    M.COUNTING_MIN_FRACTION = 0.0 if path == "counting" else float("inf")
    try:
        return M.mean_average_precision(*args, threads=threads, **kw)
    finally:
        M.COUNTING_MIN_FRACTION = saved


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--database", type=int, default=58000)
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--depths", default="all,5000,1000")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--paths", action="store_true", help="counting sort against top-only argsort")
    a = ap.parse_args(argv)
    try:
        import torch
        torch.set_num_threads(a.threads)
    except ImportError:
        torch = None
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"load={os.getloadavg()[0]:.2f},{os.getloadavg()[1]:.2f}; python {platform.python_version()}, "
          f"numpy {np.__version__}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} "
          f"torch threads={torch.get_num_threads() if torch else None}")
    rng = np.random.default_rng(a.seed)
    qB = rng.choice(np.array([-1, 1], dtype=np.float32), size=(a.queries, a.bits))
    dB = rng.choice(np.array([-1, 1], dtype=np.float32), size=(a.database, a.bits))
    depths = [None if d == "all" else int(d) for d in a.depths.split(",")]
    M._counting_sort()  # scipy.sparse is imported at first use: not inside a timed call
    print(f"{a.queries} queries x {a.database} database, {a.bits} bits, {a.classes} classes, "
          f"{a.repeats} interleaved repeats, median seconds")
    if a.paths:
        print("old = the argsort of the top (_stable_top), new = the counting sort of the whole database")
    print(f"{'labels':<7} {'depth':>6} {'old_s':>8} {'new_s':>8} {'ratio':>6}  max_abs_diff")
    for multi in (False, True):
        qL, dL = labels(rng, a.queries, a.classes, multi), labels(rng, a.database, a.classes, multi)
        for depth in depths:
            t_old, t_new, diff = [], [], 0.0
            for r in range(a.repeats):
                pair = [("old", M._mean_average_precision_reference),
                        ("new", functools.partial(M.mean_average_precision, threads=a.threads))]
                if a.paths:
                    pair = [("old", functools.partial(ranking, "sort", a.threads)),
                            ("new", functools.partial(ranking, "counting", a.threads))]
                if r % 2:
                    pair.reverse()  # alternate who goes first
                vals = {}
                for name, fn in pair:
                    t0 = time.perf_counter()
                    vals[name] = fn(qB, dB, qL, dL, depth=depth)
                    (t_old if name == "old" else t_new).append(time.perf_counter() - t0)
                diff = max(diff, abs(vals["old"] - vals["new"]))
            o, n = statistics.median(t_old), statistics.median(t_new)
            print(f"{'multi' if multi else 'single':<7} {depth or 'all':>6} {o:8.3f} {n:8.3f} {o / n:6.2f}  {diff:.3g}"
                  f"   (mAP {vals['new']:.6f})", flush=True)


if __name__ == "__main__":
    main()
