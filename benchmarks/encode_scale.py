"""``schn encode`` throughput on many JPEG files: loader workers and processes, in one run.

    .venv/bin/python benchmarks/encode_scale.py            # 20,000 CIFAR-10 JPEGs, chunks of 4,096

Setup (in --work, reused): the first --files JPEGs of the CIFAR-10 archive written out as files,
and a small-CNN run trained briefly on CIFAR-10 at 32x32 (the model only needs to exist). Then
the same encode, timed end to end as a user runs it (process start, model load, merge included):
no loader worker (the reference), --workers 1, and 2 processes under torchrun. Each result is
checked equal to the reference's codes. Prints a table; writes benchmarks/results/encode_scale.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def prepare(work: Path, files: int) -> tuple[Path, Path]:
    images = work / "images"
    if not images.is_dir() or len(list(images.iterdir())) < files:
        images.mkdir(parents=True, exist_ok=True)
        with tarfile.open(ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz") as tar:
            written = 0
            for member in tar:
                if member.isfile() and member.name.endswith(".jpg"):
                    (images / f"{written:06d}.jpg").write_bytes(tar.extractfile(member).read())
                    written += 1
                    if written == files:
                        break
    run = work / "runs" / "cifar-small"
    if not (run / "checkpoint.pt").is_file():
        subprocess.run([str(BIN / "schn"), "train", "--config", "configs/cifar10-jpg-scratch.yaml",
                        "--set", "train.iterations=1", "--set", "train.epochs_per_iteration=1",
                        "--set", "train.num_samples=500", "--set", "train.select=last",
                        "--set", f"run.out_dir={work / 'runs'}", "--set", "run.name=cifar-small", "--quiet"],
                       cwd=ROOT, check=True)
    return images, run


def timed(cmd: list[str], out: Path) -> float:
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=20_000)
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument("--work", default="/tmp/schn-encode-scale")
    args = p.parse_args()
    work = Path(args.work)
    images, run = prepare(work, args.files)
    common = ["encode", str(run), str(images), "--chunk-size", str(args.chunk_size), "--quiet", "-o"]
    settings = [("1 process, no loader worker", [str(BIN / "schn")], []),
                ("1 process, --workers 1", [str(BIN / "schn")], ["--workers", "1"]),
                ("2 processes (torchrun), no loader worker",
                 [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "schn"], [])]
    rows, reference = [], None
    for name, launcher, extra in settings:
        out = work / f"codes-{len(rows)}.npz"
        seconds = timed([*launcher, *common, str(out), *extra], out)
        with np.load(out) as f:
            codes = f["codes"]
        reference = codes if reference is None else reference
        rows.append((name, seconds, args.files / seconds, bool(np.array_equal(codes, reference))))
        print(f"{name:<45} {seconds:7.1f} s  {args.files / seconds:8,.0f} images/s  same codes: {rows[-1][3]}",
              flush=True)
    base = rows[0][2]
    lines = [f"```sh\n.venv/bin/python benchmarks/encode_scale.py {' '.join(sys.argv[1:])}\n```",
             f"{datetime.datetime.now().isoformat(timespec='seconds')}, {os.cpu_count()} CPU cores, "
             f"{args.files:,} CIFAR-10 JPEGs (32x32), small CNN, chunks of {args.chunk_size:,}; "
             "end to end (process start, model load, merge)", "",
             "| setting | seconds | images/s | ratio | same codes |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {s:.1f} | {r:,.0f} | {r / base:.2f}x | {same} |" for n, s, r, same in rows]
    out = ROOT / "benchmarks" / "results" / "encode_scale.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(row[3] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
