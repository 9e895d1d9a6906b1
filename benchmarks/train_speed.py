"""Training speed of SCHN (tomm) in one run: precision, processes, and the adversarial steps' pass.

    .venv/bin/python benchmarks/train_speed.py                      # speed table, then quality table
    .venv/bin/python benchmarks/train_speed.py --skip-quality

Speed (images/s of training, validation and evaluation excluded), one row per setting on the
same data, split and backbone (default: CIFAR-10 JPEG, small CNN at 32x32 from scratch), each
trained for --iterations outer iterations of --samples items:
- fp32, the adversarial steps on a fresh pass without gradient (schn's default, method.md);
- the authors' step structure: a second full forward pass with gradient (``adversarial_pass=full``);
- reuse of the step's own outputs (``adversarial_pass=reuse``): no second pass;
- bf16 autocast; 2 processes under torchrun (gloo on CPU; the same global batch).
Ratios are against the first row, measured in the same run.

Quality (``--quality-config``, default digits): mAP@all of fresh vs reuse over --seeds seeds,
each a full run with validation-based selection, to tell whether reusing is equivalent.
Writes benchmarks/results/train_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SPEED_ROWS = [  # name, overrides, processes
    ("fp32, fresh pass without gradient (default)", ["train.precision=fp32", "method.adversarial_pass=fresh"], 1),
    ("fp32, authors' step: second full forward pass", ["train.precision=fp32", "method.adversarial_pass=full"], 1),
    ("fp32, reuse the step's outputs", ["train.precision=fp32", "method.adversarial_pass=reuse"], 1),
    ("bf16 autocast, fresh pass", ["train.precision=bf16", "method.adversarial_pass=fresh"], 1),
    ("fp32, fresh pass, 2 processes (torchrun, gloo)", ["train.precision=fp32", "method.adversarial_pass=fresh"], 2),
]


def speed_once(config: str, overrides: list[str]) -> dict:
    """Train without validation or evaluation; images/s of the training loop (this process)."""
    from schn import distributed
    from schn.config import load_config
    from schn.engine import seed_everything, train_method
    from schn.runs import prepare_run

    here = distributed.init()
    cfg = load_config(config, [*overrides, "train.select=last", "run.progress=false"])
    seed_everything(cfg.run.seed)
    run = prepare_run(cfg, progress=False)
    start = time.perf_counter()
    result = train_method(cfg, run.method, run.inputs, run.split, run.labels, run.device, progress=False)
    out = {"images": result.images, "seconds": round(result.seconds, 2),
           "images_per_second": round(result.images_per_second, 1), "wall_s": round(time.perf_counter() - start, 2),
           "processes": here.size}
    distributed.finish()
    return out


def speed(args) -> list[dict]:
    common = ["method.variant=tomm", f"train.iterations={args.iterations}", f"train.num_samples={args.samples}",
              "train.epochs_per_iteration=1", f"train.num_workers={args.workers}"]
    rows = []
    for name, overrides, processes in SPEED_ROWS:
        cmd = [sys.executable, __file__, "--child", args.config, *common, *overrides]
        if processes > 1:
            cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", str(processes),
                   __file__, "--child", args.config, *common, *overrides]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        row = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][0])
        rows.append({"setting": name, **row})
        print(f"{name:<50} {row['images_per_second']:>8,.1f} images/s", flush=True)
    base = rows[0]["images_per_second"]
    for row in rows:
        row["ratio"] = round(row["images_per_second"] / base, 3)
    return rows


def quality(args) -> list[dict]:
    from schn.config import load_config
    from schn.runs import train_run

    rows = []
    for mode in ("fresh", "reuse"):
        for seed in range(args.seeds):
            cfg = load_config(args.quality_config, ["method.variant=tomm", f"method.adversarial_pass={mode}",
                                                    f"run.seed={seed}", f"split.seed={seed}",
                                                    f"run.out_dir={args.work}", f"run.name={mode}-{seed}",
                                                    "run.progress=false"])
            _, metrics = train_run(cfg, progress=False, echo=lambda *a: None)
            rows.append({"pass": mode, "seed": seed, "map": round(metrics["map"], 4),
                         "images_per_second": metrics["images_per_second"]})
            print(f"{mode:<6} seed {seed}: mAP@all {metrics['map']:.4f}, {metrics['images_per_second']:,.0f} images/s",
                  flush=True)
    return rows


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        out = speed_once(sys.argv[2], sys.argv[3:])
        if int(os.environ.get("RANK", 0)) == 0:
            print(json.dumps(out))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/cifar10-jpg-scratch.yaml")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--quality-config", default="configs/digits.yaml")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--work", default="/tmp/schn-train-speed")
    p.add_argument("--out", default="benchmarks/results/train_speed.json")
    args = p.parse_args()
    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": f"{os.cpu_count()} CPU cores",
           "command": " ".join([".venv/bin/python", "benchmarks/train_speed.py", *sys.argv[1:]]),
           "config": args.config, "iterations": args.iterations, "samples": args.samples, "speed": speed(args)}
    if not args.skip_quality:
        res["quality"] = quality(args)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    lines = ["| setting | images/s | ratio |", "|---|---|---|"]
    lines += [f"| {r['setting']} | {r['images_per_second']:,.1f} | {r['ratio']:.2f}x |" for r in res["speed"]]
    if "quality" in res:
        lines += ["", "| adversarial pass | seed | mAP@all | images/s |", "|---|---|---|---|"]
        lines += [f"| {r['pass']} | {r['seed']} | {r['map']:.4f} | {r['images_per_second']:,.0f} |" for r in res["quality"]]
    out.with_suffix(".md").write_text(f"```sh\n{res['command']}\n```\n{res['date']}, {res['machine']}\n\n"
                                      + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
