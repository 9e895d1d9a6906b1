"""Plots are written atomically as valid, non-trivial PNGs."""
import numpy as np
import pytest

from schn import metrics as M
from schn import plots as P
from schn.errors import SchnError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path, folder):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temp file left behind


@pytest.fixture(scope="module")
def results():
    rng = np.random.default_rng(0)
    dB = rng.choice([-1, 1], size=(300, 12))
    dL = np.eye(4, dtype=np.uint8)[rng.integers(0, 4, 300)]
    out = {}
    for name, noise in (("good", 0.1), ("bad", 0.4)):
        qB = np.where(rng.random((20, 12)) < noise, -dB[:20], dB[:20])
        out[name] = M.evaluate_retrieval(qB, dB, dL[:20], dL)
    return out


def test_pr_curve_single_and_overlaid(tmp_path, results):
    one = P.plot_pr_curve(results["good"], tmp_path / "a" / "pr.png")
    _check_png(one, tmp_path / "a")
    for form in (results, list(results.items()), [dict(v, label=k) for k, v in results.items()]):
        out = P.plot_pr_curve(form, tmp_path / "b" / "pr.png")
        _check_png(out, tmp_path / "b")


def test_precision_at_n(tmp_path, results):
    out = P.plot_precision_at_n(results, tmp_path / "pn.png")
    _check_png(out, tmp_path)


def test_bad_input_is_schn_error(tmp_path):
    with pytest.raises(SchnError):
        P.plot_pr_curve({"x": {"map": 1.0}}, tmp_path / "x.png")
    with pytest.raises(SchnError):
        P.plot_pr_curve([], tmp_path / "x.png")


@pytest.mark.parametrize("multi", [False, True])
def test_tsne(tmp_path, multi):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 3, 80)
    centres = rng.choice([-1, 1], size=(3, 16))
    codes = np.where(rng.random((80, 16)) < 0.1, -centres[ids], centres[ids])
    labels = np.eye(3, dtype=np.uint8)[ids] if multi else ids
    if multi:
        labels[0] = 0  # an item without labels
        labels[1, 2] = 1  # and one with two
    out = P.plot_tsne(codes, labels, ["a", "b", "c"], tmp_path / "tsne.png", max_points=60)
    _check_png(out, tmp_path)


def test_map_vs_bits_keeps_many_methods_apart(tmp_path):
    series = {f"m{i}": {"bits": [12, 24, 48], "map": [0.1 * (i % 9), 0.5, None]} for i in range(12)}
    path = P.plot_map_vs_bits(series, tmp_path / "m.png")
    assert path.is_file() and path.stat().st_size > 1000


def test_anytime_curves(tmp_path):
    series = {"a": {"seconds": [1.0, 2.0, 3.5], "map": [0.2, 0.4, 0.45]}, "b": {"seconds": [0.5], "map": [0.3]}}
    out = P.plot_anytime(series, tmp_path / "anytime.png")
    _check_png(out, tmp_path)
