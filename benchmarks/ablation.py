"""SCHN ablations scored on the validation split only (never the queries); prints markdown rows.

Each row removes or reweights one part of SCHN (label network, latent space, reconstruction,
discriminator, the alpha / beta / gamma weights) and trains for the same number of outer
iterations (or under the same time budget), on a saved split, with the same seed. The score is
the best validation mAP (the model-selection score: validation items against the training
pool's learned codes); the query set is not evaluated at all.

    .venv/bin/python benchmarks/ablation.py --config configs/cifar10-jpg-efficientnet-frozen.yaml \\
        --split runs/benchmarks/cifar10-frozen/split.json --bits 32 --iterations 20

Options: --only NAME ... (a subset of rows), --set KEY=VALUE (every row), --time-budget S (equal
time instead of equal iterations; --iterations is then a cap).
"""
from __future__ import annotations

import argparse

from schn.config import load_config
from schn.engine import seed_everything, train_method
from schn.runs import prepare_run

NO_LABEL = ["method.label_loss_weight=0", "method.alpha=0"]
NO_LATENT = ["method.latent_loss_weight=0", "method.beta=0"]
NO_REC = ["method.rec_loss_weight=0"]
ABLATIONS = {
    "SCHN mmasia (method.md)": [],
    "+ discriminator (tomm)": ["method.variant=tomm"],
    "- label network (its loss and alpha)": NO_LABEL,
    "- latent space (its loss and beta)": NO_LATENT,
    "- reconstruction": NO_REC,
    "- interaction module (latent, reconstruction)": NO_LATENT + NO_REC,
    "- all but the image loss": NO_LABEL + NO_LATENT + NO_REC,
    "alpha=0 (label codes out of the update only)": ["method.alpha=0"],
    "beta=0 (latent codes out of the update only)": ["method.beta=0"],
    "gamma=1": ["method.gamma=1"],
    "gamma=200 (ADSH's)": ["method.gamma=200"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--split", required=True, help="the saved split.json of the benchmark grid")
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--time-budget", type=float, default=None, help="seconds; then --iterations is a cap")
    parser.add_argument("--only", nargs="+", default=None)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    rows = {k: v for k, v in ABLATIONS.items() if args.only is None or k in args.only}
    print("| ablation | best val mAP | selected it. | iterations | train s |")
    print("|---|---|---|---|---|")
    for label, sets in rows.items():
        budget = [] if args.time_budget is None else [f"train.time_budget={args.time_budget}"]
        cfg = load_config(args.config, [f"train.bits={args.bits}", f"split.file={args.split}", "train.select=val",
                                        f"train.iterations={args.iterations}", "run.progress=false", *budget,
                                        *sets, *args.set])
        seed_everything(cfg.run.seed)
        run = prepare_run(cfg, progress=False)
        result = train_method(cfg, run.method, run.inputs, run.split, run.labels, run.device, progress=False)
        print(f"| {label} | {result.best_val_map:.4f} | {result.selected_iteration} | {result.iterations} | "
              f"{result.seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
