"""`schn benchmark`: cell configs, one shared split, results files, resume, failing cells."""
import csv
import json
from pathlib import Path

import pytest
import yaml

from schn.benchmark import cell_config, resolve_method
from schn.cli import main
from schn.errors import SchnError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")
BASE = {"data": {"name": "digits"}, "model": {"backbone": "small_cnn", "weights": "none"},
        "method": {"name": "schn", "variant": "mmasia", "lr": 0.001}, "train": {"epochs_per_iteration": 3}}


def _cell(label, sets=(), budget=None, base=BASE):
    return cell_config(base, label, 16, list(sets), budget, Path("split.json"), Path("out"))


def test_base_method_options_apply_where_the_method_has_them():
    dpsh = _cell("dpsh")
    assert dpsh.config.method_name == "dpsh" and dpsh.config.method.lr == 0.001
    assert dpsh.not_applied == ["variant"]
    tomm = _cell("schn-tomm")
    assert tomm.config.method_name == "schn" and tomm.config.method.variant == "tomm"
    assert tomm.not_applied == [] and tomm.name == "schn-tomm-16b"
    lsh = _cell("lsh", sets=["method.lr=0.5", "train.batch_size=32"])
    assert lsh.not_applied == ["lr", "variant"] and lsh.config.train.batch_size == 32


def test_schedules_by_family_and_user_sets_win():
    lsh = _cell("lsh").config
    assert (lsh.train.iterations, lsh.train.epochs_per_iteration, lsh.train.select) == (1, 1, "last")
    assert lsh.model.backbone == "pixels"  # shallow methods read raw pixels unless features are frozen
    frozen = {**BASE, "model": {"backbone": "efficientnet_lite0", "weights": "imagenet", "frozen": True}}
    assert _cell("lsh", base=frozen).config.model.backbone == "efficientnet_lite0"
    assert _cell("dpsh").config.train.epochs_per_iteration == 1
    assert _cell("adsh").config.train.num_samples == 2000
    assert _cell("schn").config.train.epochs_per_iteration == 3
    assert _cell("dpsh", sets=["train.epochs_per_iteration=2"]).config.train.epochs_per_iteration == 2
    budget = _cell("schn", budget=30).config.train
    assert budget.time_budget == 30 and budget.iterations > 1000
    assert _cell("lsh", budget=30).config.train.iterations == 1


def test_overrides_for_one_method_only():
    sets = ["schn:train.num_samples=700", "adsh:method.gamma=50", "train.batch_size=16"]
    schn, adsh, tomm = (_cell(m, sets=sets).config for m in ("schn", "adsh", "schn-tomm"))
    assert schn.train.num_samples == 700 and tomm.train.num_samples == 700  # by registered name
    assert adsh.method.gamma == 50 and adsh.train.num_samples == 2000
    assert {schn.train.batch_size, adsh.train.batch_size} == {16}
    assert _cell("schn-tomm", sets=["schn-tomm:train.num_samples=9"]).config.train.num_samples == 9
    assert _cell("schn", sets=["schn-tomm:train.num_samples=9"]).config.train.num_samples != 9
    with pytest.raises(SchnError, match="unknown method 'adhs'"):
        _cell("schn", sets=["adhs:method.gamma=1"])


def test_unknown_method_names_the_choices():
    with pytest.raises(SchnError, match="choose from: .*schn-tomm"):
        resolve_method("adhs")


FAST = ["--set", "train.iterations=1", "--set", "train.epochs_per_iteration=1"]


def _bench(out, methods, bits, *extra):
    return main(["benchmark", "--config", DIGITS, "--methods", methods, "--bits", bits, *FAST, *extra,
                 "-o", str(out)])


def test_grid_writes_results_plots_and_resumes(tmp_path, capsys):
    out = tmp_path / "b"
    # itq cannot give more bits than the 64 pixels of a digit: that cell fails, the others run
    assert _bench(out, "lsh,schn,itq", "8,128") == 1
    text = capsys.readouterr().out
    assert "FAILED" in text and "ETA" in text
    rows = list(csv.DictReader((out / "results.csv").open()))
    status = {(r["method"], r["bits"]): r["status"] for r in rows}
    assert status.pop(("itq", "128")) == "failed" and set(status.values()) == {"done"}
    assert all(0 <= float(r["map"]) <= 1 for r in rows if r["status"] == "done")
    assert any("map" in r["best_in"] for r in rows if r["bits"] == "8")
    md = (out / "results.md").read_text()
    assert "**" in md and "failed: SchnError" in md and "What each method ran with" in md
    for name in ("map_vs_bits.png", "pr_curve_128b.png", "precision_at_n_128b.png", "split.json"):
        assert (out / name).is_file(), name
    shared = json.loads((out / "split.json").read_text())
    for cell in ("lsh-8b", "schn-8b", "schn-128b"):
        assert json.loads((out / cell / "split.json").read_text())["query"] == shared["query"]
        assert (out / cell / "metrics.json").is_file()

    # a re-run skips the finished cells and retries the failed one
    before = (out / "schn-8b" / "metrics.json").stat().st_mtime_ns
    assert _bench(out, "lsh,schn,itq", "8,128") == 1
    assert "5 already finished, 1 to run" in capsys.readouterr().out
    assert (out / "schn-8b" / "metrics.json").stat().st_mtime_ns == before

    # an unfinished cell (killed mid-training) is run again from scratch
    (out / "lsh-8b" / "metrics.json").unlink()
    assert _bench(out, "lsh", "8") == 0
    assert (out / "lsh-8b" / "metrics.json").is_file()

    # a finished cell whose config would change is refused, not silently mixed in
    assert _bench(out, "lsh", "8", "--set", "train.batch_size=32") == 2
    assert "another config" in capsys.readouterr().err


def test_bad_method_list_is_one_line(tmp_path, capsys):
    assert _bench(tmp_path / "x", "schn,nope", "8") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown method 'nope'") and err.count("\n") == 1
    assert _bench(tmp_path / "x", "schn", "8,a") == 2
    assert "comma-separated list of ints" in capsys.readouterr().err


def test_resolved_cell_config_is_saved_in_each_run_folder(tmp_path):
    out = tmp_path / "b"
    assert _bench(out, "dpsh", "8") == 0
    saved = yaml.safe_load((out / "dpsh-8b" / "config.yaml").read_text())
    assert saved["method"]["name"] == "dpsh" and saved["method"]["lr"] == 0.001
    assert saved["split"]["file"] == str(out / "split.json") and saved["train"]["bits"] == 8
