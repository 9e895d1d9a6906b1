"""SCHN ablations scored on the validation split only (never the queries); prints markdown rows.

Each row removes or reweights one part of SCHN (label network, latent space, reconstruction,
discriminator, the alpha / beta / gamma weights) and trains for the same number of outer
iterations (or under the same time budget), on a saved split, with the same seed. The score is
the best validation mAP (the model-selection score: validation items against the training
pool's learned codes); the query set is not evaluated at all.

    .venv/bin/python benchmarks/ablation.py --config configs/cifar10-jpg-efficientnet-frozen.yaml \\
        --split runs/benchmarks/cifar10-frozen/split.json --bits 32 --iterations 20

Options: --only NAME ... (a subset of rows), --set KEY=VALUE (the base of every row, e.g. a study's
tuned values; a row's own settings win over it), --time-budget S (equal
time instead of equal iterations; --iterations is then a cap), --seeds 0,1,2 (each row once per
seed, on the same split: mean +- standard deviation), --table departures (issue 14's options,
each alone and together, instead of the parts of SCHN), --table plus (the same departures from
schn-plus: pass --set method.name=schn-plus and its tuned values). Besides the best validation mAP, each
row reports the symmetric validation mAP of the selected model (the pool encoded by the image
network, as items added later to an index are).
"""
from __future__ import annotations

import argparse
import statistics

from schn.benchmark import mean_std_text
from schn.config import load_config
from schn.engine import seed_everything, train_method
from schn.evaluate import validation_map
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

# issue 14: each departure from method.md alone (off = method.md), then all of them together.
# On frozen features the cycle can only train a hidden layer, so that row adds one (and so does
# a row with the hidden layer alone, for every method).
DEPARTURES = {
    "SCHN mmasia (method.md)": [],
    "update_scope=database": ["method.update_scope=database"],
    "pairing=sampled": ["method.pairing=sampled"],
    "pairing=database": ["method.pairing=database"],
    "model.head=mlp": ["model.head=mlp"],
    "model.head=mlp + detach_cycle_inputs=false": ["model.head=mlp", "method.detach_cycle_inputs=false"],
    "alpha=beta=1e4 (label codes as anchors)": ["method.alpha=1e4", "method.beta=1e4"],
    "label_target_weight=1": ["method.label_target_weight=1"],
    "final_fit_epochs=3": ["train.final_fit_epochs=3"],
    "all of the above": ["method.update_scope=database", "method.pairing=database", "model.head=mlp",
                         "method.detach_cycle_inputs=false", "method.alpha=1e4", "method.beta=1e4",
                         "method.label_target_weight=1", "train.final_fit_epochs=3"],
}
# The other departures again, from schn-plus (--set method.name=schn-plus and its tuned values):
# measured from method.md's SCHN they could not show an effect, since it never left its first pass.
PLUS_DEPARTURES = {
    "schn-plus (update_scope=database)": [],
    "pairing=database": ["method.pairing=database"],
    "model.head=mlp": ["model.head=mlp"],
    "model.head=mlp + detach_cycle_inputs=false": ["model.head=mlp", "method.detach_cycle_inputs=false"],
    "label_target_weight=1": ["method.label_target_weight=1"],
    "final_fit_epochs=3": ["train.final_fit_epochs=3"],
    "final_fit_epochs=10": ["train.final_fit_epochs=10"],
    "attention_dim=64, latent_dim=128 (a smaller interaction module)": ["method.attention_dim=64",
                                                                         "method.latent_dim=128"],
}
TABLES = {"schn": ABLATIONS, "departures": DEPARTURES, "plus": PLUS_DEPARTURES}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--split", required=True, help="the saved split.json of the benchmark grid")
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--time-budget", type=float, default=None, help="seconds; then --iterations is a cap")
    parser.add_argument("--only", nargs="+", default=None)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--seeds", default="0", help="comma-separated run.seed values, e.g. 0,1,2")
    parser.add_argument("--table", choices=sorted(TABLES), default="schn")
    args = parser.parse_args()
    rows = {k: v for k, v in TABLES[args.table].items() if args.only is None or k in args.only}
    seeds = [int(s) for s in args.seeds.split(",")]
    print("| ablation | best val mAP | symmetric val mAP | selected it. | iterations | train s | seeds |")
    print("|---|---|---|---|---|---|---|")
    for label, sets in rows.items():
        budget = [] if args.time_budget is None else [f"train.time_budget={args.time_budget}"]
        scores, symmetric, selected, iterations, seconds = [], [], [], [], []
        for seed in seeds:
            cfg = load_config(args.config, [f"train.bits={args.bits}", f"split.file={args.split}", "train.select=val",
                                            f"train.iterations={args.iterations}", "run.progress=false", *budget,
                                            *args.set, *sets, f"run.seed={seed}"])
            seed_everything(cfg.run.seed)
            run = prepare_run(cfg, progress=False)
            result = train_method(cfg, run.method, run.inputs, run.split, run.labels, run.device, progress=False)
            score = result.best_val_map
            if result.final_fit is not None and result.final_fit["kept"]:
                score = result.final_fit["val_map"]
            scores.append(score)
            symmetric.append(validation_map(run.method, run.inputs, run.split, run.labels, cfg.eval, run.device,
                                            cfg.train.encode_batch_size, symmetric=True))
            selected.append(result.selected_iteration)
            iterations.append(result.iterations)
            seconds.append(result.seconds)
        print(f"| {label} | {mean_std_text(scores)} | {mean_std_text(symmetric)} | {'/'.join(map(str, selected))} | "
              f"{'/'.join(map(str, iterations))} | {statistics.fmean(seconds):.0f} | {len(seeds)} |", flush=True)


if __name__ == "__main__":
    main()
