"""The ``schn`` command line: train, evaluate, encode, plot, demo, benchmark, index, search, list.

Every mistake a user can cause ends in one line on stderr (``error: ...``) and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from .bounds import check_range
from .errors import SchnError, one_line
from .index_cli import add_index_commands
from .serve_cli import add_serve_command
from .tune_cli import add_tune_command

DEMO_CONFIG = "digits.yaml"


def _configs_dir() -> Path:
    """configs/ of a source checkout (the README's commands run from it)."""
    return Path(__file__).resolve().parents[2] / "configs"


def _print_metrics(run_dir: Path, metrics: dict) -> None:
    depth = metrics.get("map_depth", "all")
    print(f"run: {run_dir}")
    print(f"mAP@{depth} {metrics['map']:.4f}  precision(r<=2) {metrics['precision_at_radius_2']:.4f}  "
          f"bits {metrics['bits']}  train {metrics.get('train_seconds', 0):.1f}s  "
          f"{metrics.get('images_per_second', 0):.0f} images/s")
    if "symmetric" in metrics:
        print(f"symmetric (database encoded by the network): mAP@{depth} {metrics['symmetric']['map']:.4f}")


def cmd_train(args) -> int:
    from . import distributed
    from .config import load_config
    from .runs import train_run

    if (args.config is None) == (args.resume is None):
        raise SchnError("pass --config FILE to start a run, or --resume RUN to continue an interrupted one")
    if args.resume is not None:
        if args.set:
            raise SchnError("--resume continues a run with its own config; --set cannot change it")
        run_dir, metrics = train_run(None, progress=not args.quiet, resume_dir=args.resume)
    else:
        cfg = load_config(args.config, args.set)
        run_dir, metrics = train_run(cfg, progress=not args.quiet and cfg.run.progress)
    if metrics:  # under torchrun, the first process reports
        _print_metrics(run_dir, metrics)
    distributed.finish()
    return 0


def cmd_evaluate(args) -> int:
    from .runs import evaluate_run

    metrics = evaluate_run(args.run, device=args.device, progress=not args.quiet)
    _print_metrics(Path(args.run), metrics)
    return 0


def cmd_encode(args) -> int:
    from .distributed import world
    from .encode import encode_images

    n, out, rate, skipped = encode_images(args.run, args.paths, args.output, device=args.device,
                                          progress=not args.quiet, batch_size=args.batch_size, workers=args.workers,
                                          on_bad_image=args.on_bad_image,
                                          **({} if args.chunk_size is None else {"chunk_size": args.chunk_size}))
    if world().is_main:  # under torchrun, the first process reports
        print(f"wrote {n:,} codes to {out} ({rate:,.0f} images/s)")
        if skipped:
            print(f"skipped {len(skipped):,} unreadable images (first: {skipped[0]})")
    return 0


def cmd_plot(args) -> int:
    from .plots import plot_run

    for path in plot_run(args.run):
        print(path)
    return 0


def cmd_demo(args) -> int:
    """SCHN on scikit-learn's digits at 16/32/64 bits; prints mAP@all, precision r<=2, seconds."""
    from .config import load_config
    from .runs import train_run

    for bits in args.bits:
        check_range("--bits", bits, 1, 1024)
    config = _configs_dir() / DEMO_CONFIG
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for bits in args.bits:
        cfg = load_config(config, [f"train.bits={bits}", f"run.name=demo-digits-{bits}b-{stamp}", *args.set])
        start = time.perf_counter()
        run_dir, metrics = train_run(cfg, progress=not args.quiet)
        rows.append((bits, metrics["map"], metrics["precision_at_radius_2"], time.perf_counter() - start, run_dir))
    print("\nSCHN on digits (10% per class as queries, the rest as database; small CNN, CPU)")
    print(f"{'bits':>4}  {'mAP@all':>8}  {'P(r<=2)':>8}  {'seconds':>8}  run")
    for bits, m, p, s, run_dir in rows:
        print(f"{bits:>4}  {m:>8.4f}  {p:>8.4f}  {s:>8.1f}  {run_dir}")
    _demo_search(rows[-1][-1])
    return 0


def _demo_search(run_dir: Path) -> None:
    """Index the run's database and search it with the first query image's code."""
    import numpy as np

    from .index.build import build_index
    from .index_cli import print_neighbors, result_rows

    index = build_index(run_dir, run_dir / "index", progress=False, store_images=True)
    with np.load(run_dir / "codes.npz") as saved:
        code, label = saved["query_codes"][:1], saved["query_labels"][0]
    query_label = ",".join(np.asarray(index.class_names)[label > 0])
    found = index.search(code, 5)
    ids = found.ids[0].tolist()
    print(f"\nindex: {run_dir / 'index'} ({len(index)} items, {index.bits}-bit codes)")
    print_neighbors(f"the 5 nearest to the first query image (label {query_label}):",
                    result_rows(index, ids, found.distances[0].tolist()))
    print(f"search it yourself: .venv/bin/schn search {run_dir / 'index'} --id {ids[0]} -k 5")
    print(f"or in a browser:    .venv/bin/schn serve {run_dir / 'index'}   (then open http://127.0.0.1:8000/)")


def cmd_benchmark(args) -> int:
    from .benchmark import NOT_RUN, check_seeds, parse_list, read_tuned, run_benchmark, tune_methods

    methods, bits = parse_list(args.methods), parse_list(args.bits, int)
    out = args.out or f"runs/benchmark-{Path(args.config).stem}"
    command = "schn " + " ".join(sys.argv[1:]) if sys.argv and Path(sys.argv[0]).name == "schn" else ""
    seeds = None if args.seeds is None else parse_list(args.seeds, int)
    check_seeds(seeds, args.vary_split)  # before any tuning
    if args.tune_trials is not None and args.tuned is not None:
        raise SchnError("--tune-trials tunes the methods here and --tuned takes earlier studies; pass one of them")
    lone = [flag for flag, value in (("--tune-bits", args.tune_bits), ("--tune-set", args.tune_set),
                                     ("--tune-budget", args.tune_budget)) if value]
    if lone and args.tune_trials is None:
        raise SchnError(f"{', '.join(lone)} only applies with --tune-trials N")
    if args.report_only and args.tune_trials is not None:
        raise SchnError("--report-only trains nothing, so it cannot --tune-trials; use --tuned DIR with it")
    tuned = note = tuned_bits = None
    if args.tune_trials is not None:
        tuned, note, tuned_bits = tune_methods(
            args.config, methods, bits, out, args.tune_trials, tune_bits=args.tune_bits, sets=args.set,
            tune_sets=args.tune_set, trial_budget=args.tune_budget if args.tune_budget else args.time_budget,
            command=command)
    elif args.tuned is not None:
        tuned, note, tuned_bits = read_tuned(args.tuned, methods, args.set)
    rows = run_benchmark(args.config, methods, bits, out, sets=args.set, time_budget=args.time_budget,
                         curve_bits=args.curve_bits, command=command, seeds=seeds, vary_split=args.vary_split,
                         tuned=tuned, tuning_note=note, tuned_bits=tuned_bits, report_only=args.report_only)
    failed = [r for r in rows if r["status"] not in ("done", NOT_RUN)]
    print(f"results: {Path(out) / 'results.md'}" + (f"  ({len(failed)} cell(s) failed)" if failed else ""))
    return 1 if failed else 0


def cmd_list(args) -> int:
    from .backbones import list_backbones
    from .data import list_datasets, list_splits
    from .index import list_index_backends, list_searchers
    from .methods import list_methods

    print(json.dumps({"methods": list_methods(), "backbones": list_backbones(),
                      "datasets": list_datasets(), "splits": list_splits(),
                      "searchers": list_searchers(), "index_backends": list_index_backends()}, indent=2))
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (``error: ...``, exit 2) like every other."""

    def error(self, message: str):
        print(f"error: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="schn", description="Learned binary codes for visual similarity search.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a method from a config; writes a run folder")
    p.add_argument("--config", default=None, help="YAML config (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.bits=48")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue an interrupted run from its last finished outer iteration")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="recompute a run's metrics from its checkpoint")
    p.add_argument("run")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("encode", help="encode image files or folders into packed binary codes "
                                      "(resumable; data-parallel under torchrun)")
    p.add_argument("run")
    p.add_argument("paths", nargs="+")
    p.add_argument("-o", "--output", required=True, help="output .npz (codes, ids, bits)")
    p.add_argument("--chunk-size", type=int, default=None, help="images per chunk written (and resumed) at once "
                   "(default 65,536)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="processes decoding images beside the network")
    p.add_argument("--on-bad-image", default="error", metavar="error|skip",
                   help="an unreadable or oversized image stops the encode (default), or is left out and counted")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("plot", help="PR curve, precision@N curve and t-SNE of the query codes as PNG")
    p.add_argument("run")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("demo", help="train SCHN on the embedded digits data at 16/32/64 bits")
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("benchmark", help="methods x code lengths on one split; resumable; results table and plots")
    p.add_argument("--config", required=True, help="base YAML config (data, split, model, train, eval)")
    p.add_argument("--methods", required=True, help="comma-separated, e.g. schn,schn-tomm,adsh,dpsh,lsh")
    p.add_argument("--bits", required=True, help="comma-separated code lengths, e.g. 12,24,32,48")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every cell, or METHOD:KEY=VALUE for one method's cells")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="equal training time per cell (lifts the iteration cap)")
    p.add_argument("--curve-bits", type=int, default=None, help="code length of the PR / P@N plots")
    p.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="run every cell once per seed (run.seed) on the same split; results.md: mean ± std, n")
    p.add_argument("--vary-split", action="store_true", help="with --seeds: redraw the split per seed as well")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the tables and plots of the finished cells, the rest marked not run")
    p.add_argument("--tune-trials", type=int, default=None, metavar="N",
                   help="first tune every method with the same N Optuna trials into OUT/tune/<method> "
                        "(a re-run continues the studies), then run the grid with the tuned parameters")
    p.add_argument("--tune-bits", type=int, default=None, metavar="BITS",
                   help="code length the studies tune at (default 32 if in --bits, else the first)")
    p.add_argument("--tune-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for the tuning trials only (after --set), or METHOD:KEY=VALUE")
    p.add_argument("--tune-budget", type=float, default=None, metavar="SECONDS",
                   help="training seconds per trial (default: --time-budget, else the config's schedule)")
    p.add_argument("--tuned", default=None, metavar="DIR",
                   help="take tuned parameters from earlier studies DIR/<method>/best.json (schn tune folders)")
    p.add_argument("-o", "--out", default=None, help="output folder (default runs/benchmark-<config name>)")
    p.set_defaults(func=cmd_benchmark)

    add_index_commands(sub)
    add_serve_command(sub)
    add_tune_command(sub)

    p = sub.add_parser("list", help="registered methods, backbones, data sets, split protocols, searchers")
    p.set_defaults(func=cmd_list)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no real file (a test's capture)
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit where it could not be caught
        return code
    except BrokenPipeError:  # `schn search ... | head -1`: the reader has what it wanted
        _silence_stdout()
        return 128 + signal.SIGPIPE  # the status of a Unix tool ended by SIGPIPE, without a message
    except SchnError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # permissions, a full disk, a path that vanished: the user's to fix
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or one_line(exc)}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
