"""Figures: PR curve over Hamming radius, precision@N curve, t-SNE of query codes, anytime curves.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly: no pyplot,
so no global state and no display is needed. Every PNG is written atomically (temp file in
the same folder, then ``os.replace``) so a crash never leaves a half-written image.

The curve functions take the dict of :func:`schn.metrics.evaluate_retrieval` in any of these
forms, so a benchmark can overlay methods: one dict; ``{label: dict}``; a list of dicts
(labelled by their ``"label"`` key if present); or a list of ``(label, dict)`` pairs.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import SchnError
from .fileio import atomic_path


def _series(obj, key):
    """Normalise the accepted forms to ``[(label or None, metrics dict)]``."""
    if isinstance(obj, Mapping) and key in obj:
        return [(obj.get("label"), obj)]
    if isinstance(obj, Mapping):
        items = list(obj.items())
    elif isinstance(obj, (list, tuple)):
        items = [it if isinstance(it, tuple) else (it.get("label", f"series {i + 1}"), it)
                 for i, it in enumerate(obj)]
    else:
        raise SchnError(f"cannot plot a {type(obj).__name__}; pass evaluation metrics dicts")
    for label, m in items:
        if not isinstance(m, Mapping) or key not in m:
            raise SchnError(f"metrics for {label!r} have no {key!r}; evaluate them again")
    if not items:
        raise SchnError("nothing to plot: no metrics given")
    return items


def _xy(x, y):
    """Drop undefined points (None/NaN, e.g. precision where nothing was retrieved)."""
    x = np.array([np.nan if v is None else v for v in x], dtype=float)
    y = np.array([np.nan if v is None else v for v in y], dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def _save(fig, path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return Path(path)


def _curves(series, key, xkey, ykey, xlabel, ylabel, title, path):
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.add_subplot()
    labelled = False
    items = _series(series, key)
    # past 10 series the default cycle repeats colours; tab20 plus varied markers keeps them apart
    colours = [None] * len(items) if len(items) <= 10 else [_tab20(i) for i in range(len(items))]
    for i, (label, m) in enumerate(items):
        x, y = _xy(m[key][xkey], m[key][ykey])
        ax.plot(x, y, marker=".osd^v<>"[i % 8] if len(items) > 10 else ".", color=colours[i], label=label)
        labelled |= label is not None
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    if labelled:
        # many methods: the legend goes beside the axes, not over the curves
        ax.legend(**({"loc": "upper left", "bbox_to_anchor": (1.02, 1)} if len(items) > 5 else {}))
    return _save(fig, path)


def _tab20(i):
    from matplotlib import colormaps

    return colormaps["tab20"](i % 20)


def plot_pr_curve(metrics_or_list, path, title="Precision-recall (Hamming radius)") -> Path:
    """Precision against recall, one point per Hamming radius 0..c."""
    return _curves(metrics_or_list, "pr_curve", "recall", "precision", "recall", "precision",
                   title, path)


def plot_precision_at_n(metrics_or_list, path, title="Precision@N") -> Path:
    """Precision of the top N against N (``p_at_n_curve``)."""
    return _curves(metrics_or_list, "p_at_n_curve", "n", "precision", "N (top retrieved)",
                   "precision", title, path)


def plot_map_vs_bits(series, path, title="mAP against code length", ylabel="mAP") -> Path:
    """mAP against code length, one line per method: ``{label: {"bits": [...], "map": [...]}}``."""
    wrapped = {label: {"map_vs_bits": values} for label, values in dict(series).items()}
    return _curves(wrapped, "map_vs_bits", "bits", "map", "code length (bits)", ylabel, title, path)


def plot_anytime(series, path, title="Validation mAP against training time") -> Path:
    """Anytime curves: validation mAP against cumulative training seconds, one line per method:
    ``{label: {"seconds": [...], "map": [...]}}``."""
    wrapped = {label: {"anytime": values} for label, values in dict(series).items()}
    return _curves(wrapped, "anytime", "seconds", "map", "training seconds (cumulative, validation not counted)",
                   "validation mAP", title, path)


def plot_tsne(codes, labels_or_class_ids, class_names, path, seed=0, max_points=2000,
              title="t-SNE of query codes") -> Path:
    """2-d t-SNE of codes coloured by class; multi-hot rows use their first label."""
    from sklearn.manifold import TSNE  # slow import, only needed here

    if hasattr(codes, "detach"):
        codes = codes.detach().cpu().numpy()
    x = np.asarray(codes, dtype=np.float32)
    lab = np.asarray(labels_or_class_ids)
    if x.ndim != 2 or len(lab) != len(x):
        raise SchnError(f"codes {x.shape} and labels {lab.shape} must be (n, bits) and n rows")
    if lab.ndim == 2:  # multi-hot: first label, -1 for an item without any
        cls = np.where(lab.any(axis=1), lab.argmax(axis=1), -1)
    else:
        cls = lab.astype(int)
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        pick = np.sort(rng.choice(len(x), max_points, replace=False))
        x, cls = x[pick], cls[pick]
    if len(x) < 5:
        raise SchnError(f"t-SNE needs at least 5 points, got {len(x)}")
    # perplexity must stay below the number of points
    emb = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca",
               random_state=seed).fit_transform(x)
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot()
    ids = np.unique(cls)
    for i, c in enumerate(ids):
        name = "no label" if c < 0 else (class_names[c] if c < len(class_names) else str(c))
        colour = f"C{i}" if len(ids) <= 10 else _hsv(i, len(ids))
        ax.scatter(*emb[cls == c].T, s=6, color=colour, label=name)
    ax.set(title=title, xticks=[], yticks=[])
    ax.legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def _hsv(i, n):
    """Distinct colours for more than 10 classes."""
    from matplotlib.colors import hsv_to_rgb

    return hsv_to_rgb((i / n, 0.75, 0.85 if i % 2 else 0.6))


def plot_run(run_dir) -> list[Path]:
    """The three figures of a run folder, from what train/evaluate wrote, into RUN/plots/."""
    from . import codes as codes_mod

    run_dir = Path(run_dir)
    needed = [run_dir / "curves.json", run_dir / "codes.npz"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise SchnError(f"{run_dir} lacks {', '.join(missing)}; pass a run folder written by `schn train`"
                        " (or run `schn evaluate` on it first)")
    curves = json.loads(needed[0].read_text())
    series = {f"{kind} ({run_dir.name})": c for kind, c in curves.items()}
    out = run_dir / "plots"
    paths = [plot_pr_curve(series, out / "pr_curve.png"), plot_precision_at_n(series, out / "precision_at_n.png")]
    saved = np.load(needed[1])
    query = codes_mod.unpack(saved["query_codes"], int(saved["bits"]))
    names = [str(n) for n in saved["class_names"]] if "class_names" in saved else None
    paths.append(plot_tsne(query, saved["query_labels"], names, out / "tsne_queries.png"))
    return paths
