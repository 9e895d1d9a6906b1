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


def _cell(label, sets=(), budget=None, base=BASE, tuned=None):
    return cell_config(base, label, 16, list(sets), budget, Path("split.json"), Path("out"), tuned=tuned)


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

    # ... but one written before an option existed (saved without it, at its default) is the same cell
    saved = yaml.safe_load((out / "lsh-8b" / "config.yaml").read_text())
    del saved["train"]["final_fit_epochs"], saved["model"]["head"]
    (out / "lsh-8b" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert _bench(out, "lsh", "8") == 0
    assert "1 already finished, 0 to run" in capsys.readouterr().out


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


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_seeds_run_every_cell_per_seed_on_one_split(tmp_path, capsys):
    out = tmp_path / "s"
    assert _bench(out, "lsh,dpsh", "8", "--seeds", "0,1") == 0
    names = {p.name for p in out.iterdir() if p.is_dir()}
    assert names == {"lsh-8b-s0", "lsh-8b-s1", "dpsh-8b-s0", "dpsh-8b-s1"}
    shared = json.loads((out / "split.json").read_text())
    for name in names:
        saved = yaml.safe_load((out / name / "config.yaml").read_text())
        assert saved["run"]["seed"] == int(name[-1]) and saved["split"]["file"] == str(out / "split.json")
        assert json.loads((out / name / "split.json").read_text())["query"] == shared["query"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted((r["method"], r["seed"]) for r in rows) == [("dpsh", "0"), ("dpsh", "1"), ("lsh", "0"), ("lsh", "1")]
    md = (out / "results.md").read_text()
    maps = {m: [float(r["map"]) for r in rows if r["method"] == m] for m in ("lsh", "dpsh")}
    mean = sum(maps["dpsh"]) / 2
    std = abs(maps["dpsh"][0] - maps["dpsh"][1]) / 2**0.5  # the sample std of two values
    assert f"| dpsh | 8 | 2 | {mean:.4f} ± {std:.4f}" in md or f"| dpsh | 8 | 2 | **{mean:.4f} ± {std:.4f}" in md
    assert "Best against second best" in md and "Welch p=" in md and "Every cell" in md
    # the anytime curve: a valid PNG; dpsh validates every iteration, lsh (fitted once) has no curve
    png = (out / "anytime-8b.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 5000
    # a re-run finds every seed's cell finished; a seeds-less grid keeps the old names
    assert _bench(out, "lsh,dpsh", "8", "--seeds", "0,1") == 0
    assert "4 already finished, 0 to run" in capsys.readouterr().out


def test_report_only_tabulates_the_finished_cells_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    assert _bench(out, "lsh", "8", "--seeds", "0") == 0
    capsys.readouterr()
    assert _bench(out, "lsh,itq", "8", "--seeds", "0,1", "--report-only") == 0
    assert "1 already finished, 3 to run" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["lsh-8b-s0"]  # nothing trained
    rows = {(r["method"], r["seed"]): r["status"] for r in csv.DictReader((out / "results.csv").open())}
    assert rows == {("lsh", "0"): "done", ("lsh", "1"): "not run", ("itq", "0"): "not run", ("itq", "1"): "not run"}
    md = (out / "results.md").read_text()
    assert "| lsh | 8 | 1 |" in md and "1 not run yet" in md and "| itq | 8 | 0 |" in md


def test_vary_split_draws_a_split_per_seed(tmp_path):
    out = tmp_path / "v"
    assert _bench(out, "lsh", "8", "--seeds", "3,4", "--vary-split") == 0
    three, four = (json.loads((out / f"split-s{s}.json").read_text()) for s in (3, 4))
    assert three["query"] != four["query"]
    saved = yaml.safe_load((out / "lsh-8b-s4" / "config.yaml").read_text())
    assert saved["split"]["seed"] == 4 and saved["split"]["file"] == str(out / "split-s4.json")
    assert json.loads((out / "lsh-8b-s4" / "split.json").read_text())["query"] == four["query"]


def test_split_overrides_shape_the_grid_split(tmp_path):
    from schn.benchmark import _read_yaml, make_split_file

    base = _read_yaml(Path(DIGITS))
    a = json.loads(make_split_file(base, tmp_path / "a", ["split.seed=5"]).read_text())
    b = json.loads(make_split_file(base, tmp_path / "b", []).read_text())
    assert a["query"] != b["query"]


def test_welch_verdict_on_fixed_numbers():
    from schn.benchmark import separation

    apart, p, text = separation([0.80, 0.81, 0.82], [0.70, 0.71, 0.72])
    assert apart is True and p < 0.001 and "separated" in text
    apart, p, text = separation([0.80, 0.90, 0.70], [0.79, 0.69, 0.85])
    assert apart is False and p >= 0.05 and "not separated" in text
    assert separation([0.8], [0.7, 0.6]) == (None, None, "n=1, not tested")
    assert separation([0.8, 0.8], [0.7, 0.7])[0] is True  # no spread, different means


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0,0"], "lists a seed twice"),
    (["--vary-split"], "pass --seeds too"),
    (["--seeds", "0,x"], "comma-separated list of ints"),
])
def test_bad_seed_options_are_one_line(tmp_path, capsys, args, message):
    assert _bench(tmp_path / "x", "lsh", "8", *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_tuned_params_apply_after_the_schedule_and_before_set():
    tuned = {"method.lr": 0.02, "method.eta": 3.0, "train.epochs_per_iteration": 4}
    dpsh = _cell("dpsh", tuned=tuned).config
    assert (dpsh.method.lr, dpsh.method.eta, dpsh.train.epochs_per_iteration) == (0.02, 3.0, 4)  # over the family's 1
    dpsh = _cell("dpsh", sets=["dpsh:method.eta=7", "method.lr=0.5"], tuned=tuned).config
    assert (dpsh.method.lr, dpsh.method.eta) == (0.5, 7.0)  # an explicit --set wins


def test_per_bit_tuned_values_scale_with_the_cell_bits():
    from schn.benchmark import _at_bits

    assert _at_bits("dsh", {"method.margin": 64.0, "method.alpha": 0.1}, 32, 16) == \
        {"method.margin": 32.0, "method.alpha": 0.1}
    assert _at_bits("dsh", {"method.margin": 64.0}, None, 16) == {"method.margin": 64.0}


def test_run_benchmark_with_tuned_params_records_them(tmp_path):
    from schn.benchmark import run_benchmark

    out = tmp_path / "t"
    run_benchmark(DIGITS, ["lsh", "itq"], [8], out, sets=["itq:method.iterations=3"], echo=lambda s: None,
                  tuned={"itq": {"method.iterations": 9}}, tuning_note="tuned by hand for the test")
    assert yaml.safe_load((out / "itq-8b" / "config.yaml").read_text())["method"]["iterations"] == 3
    run_benchmark(DIGITS, ["itq"], [8], tmp_path / "u", echo=lambda s: None, tuned={"itq": {"method.iterations": 9}},
                  tuning_note="tuned by hand for the test")
    assert yaml.safe_load((tmp_path / "u" / "itq-8b" / "config.yaml").read_text())["method"]["iterations"] == 9
    md = (out / "results.md").read_text()
    assert "## Tuning" in md and "tuned by hand for the test" in md and "- itq: method.iterations=9" in md
    assert "- lsh: not tuned" in md


def test_tune_trials_tune_every_method_once_then_the_grid(tmp_path, capsys):
    out = tmp_path / "g"
    args = ["--tune-trials", "2", "--tune-bits", "8"]
    assert _bench(out, "lsh,itq", "8", *args) == 0
    text = capsys.readouterr().out
    assert "tune itq: 0 of 2 trials finished, 2 to run" in text and "tune lsh" not in text
    assert (out / "tune" / "itq" / "split.json").read_text() == (out / "split.json").read_text()
    best = json.loads((out / "tune" / "itq" / "best.json").read_text())
    saved = yaml.safe_load((out / "itq-8b" / "config.yaml").read_text())
    assert saved["method"]["iterations"] == best["params"]["method.iterations"]
    md = (out / "results.md").read_text()
    assert "same 2 trials at 8 bits" in md and "lsh: nothing to search" in md
    # a re-run reuses the studies and the finished cells
    assert _bench(out, "lsh,itq", "8", *args) == 0
    text = capsys.readouterr().out
    assert "tune itq: 2 of 2 trials finished, 0 to run" in text and "2 already finished, 0 to run" in text
    # --tuned takes those studies for another grid
    assert _bench(tmp_path / "h", "lsh,itq", "8", "--tuned", str(out / "tune")) == 0
    saved = yaml.safe_load((tmp_path / "h" / "itq-8b" / "config.yaml").read_text())
    assert saved["method"]["iterations"] == best["params"]["method.iterations"]
    assert "earlier `schn tune` studies" in (tmp_path / "h" / "results.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--tune-trials", "2", "--tuned", "x"], "pass one of them"),
    (["--tune-bits", "8"], "only applies with --tune-trials"),
    (["--tuned", "DIR"], "holds no study of itq"),
    (["--tune-trials", "0"], "--tune-trials"),
    (["--tune-trials", "2", "--report-only"], "--report-only trains nothing"),
])
def test_bad_tuning_options_are_one_line(tmp_path, capsys, args, message):
    (tmp_path / "DIR").mkdir()
    args = [str(tmp_path / "DIR") if a == "DIR" else a for a in args]
    assert _bench(tmp_path / "x", "lsh,itq", "8", *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
