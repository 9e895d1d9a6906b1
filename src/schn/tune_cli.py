"""``schn tune``: search a method's hyper-parameters on the validation split (``schn.tune``)."""
from __future__ import annotations

import shlex
import sys

from .errors import SchnError


def cmd_tune(args) -> int:
    from .tune import PRUNERS, show_space, tune

    if args.show_space is not None:
        print(show_space(args.show_space))
        return 0
    missing = [flag for flag, value in (("--config", args.config), ("--method", args.method), ("-o", args.out))
               if value is None]
    if missing:
        raise SchnError(f"schn tune needs {', '.join(missing)} (or --show-space METHOD)")
    if args.pruner not in PRUNERS:
        raise SchnError(f"--pruner {args.pruner!r} is not one of {', '.join(PRUNERS)}")
    result = tune(args.config, args.method, args.bits, args.trials, args.out, storage=args.storage, sets=args.set,
                  trial_budget=args.trial_budget, pruner=args.pruner, space_file=args.space,
                  command=" ".join(["schn", *map(shlex.quote, sys.argv[1:])]))
    if result.best_value is None:
        print(f"no complete trial in {result.out} yet ({result.pruned} pruned, {result.failed} failed)")
    else:
        print(f"best validation mAP {result.best_value:.4f} with {result.best_params}")
        print(f"wrote {result.out / 'best.yaml'} ({result.complete} complete, {result.pruned} pruned, "
              f"{result.failed} failed trials)")
    return 0


def add_tune_command(sub) -> None:
    p = sub.add_parser("tune", help="search a method's hyper-parameters with Optuna on the validation split")
    p.add_argument("--config", default=None, help="base YAML config (data, split, model, schedule)")
    p.add_argument("--method", default=None, help="method to tune (a name from `schn list`)")
    p.add_argument("--bits", type=int, default=32, help="code length the study tunes at (default 32)")
    p.add_argument("--trials", type=int, default=20, help="total trials of the study (a re-run continues it)")
    p.add_argument("-o", "--out", default=None, help="study folder: study.db, best.yaml, trials.csv, plots")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="SQLAlchemy URL of the Optuna storage (default sqlite:///OUT/study.db)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the base config; a searched key set here is fixed, not searched")
    p.add_argument("--trial-budget", type=float, default=None, metavar="SECONDS",
                   help="training seconds per trial (default: the config's iterations, with early stopping)")
    p.add_argument("--pruner", default="median", help="median (default), halving (successive halving) or none")
    p.add_argument("--space", default=None, metavar="YAML", help="search this space instead of the method's own")
    p.add_argument("--show-space", default=None, metavar="METHOD", help="print a method's search space and exit")
    p.set_defaults(func=cmd_tune)
