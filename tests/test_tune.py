"""``schn tune``: search spaces, studies that resume, pruning, blindness to the queries, bad input."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from schn import tune as tune_mod
from schn.cli import main
from schn.config import TrainConfig, config_from_dict, load_config
from schn.errors import SchnError
from schn.methods import METHODS, list_methods
from schn.space import Param, check_space

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
QUICK = ["train.iterations=2", "split.val_size=100"]


def quiet(*_):
    pass


def rows(out: Path) -> list[dict]:
    with open(out / "trials.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("name", list_methods())
@pytest.mark.parametrize("bits", [16, 32, 64])
def test_every_declared_space_is_valid(name, bits):
    cls = METHODS.get(name)
    if name == "lsh":  # LSH has no hyper-parameter
        assert cls.search_space == ()
        with pytest.raises(SchnError, match="nothing to tune"):
            check_space(cls.search_space, {"method": cls.config_class, "train": TrainConfig}, bits, name)
        return
    check_space(cls.search_space, {"method": cls.config_class, "train": TrainConfig}, bits, name)


@pytest.mark.parametrize("space, message", [
    ((Param("method.nope", 0.1, 1.0),), "not an option"),
    ((Param("method.lr", 1.0, 0.1),), "low < high"),
    ((Param("method.lr", 0.0, 0.1, log=True),), "log scale"),
    ((Param("method.lr", 1e-3, 100.0),), "leaves the option's own range"),
    ((Param("method.lr", 1e-3, 0.1, integer=True),), "float option"),
    ((Param("method.lr", 1e-3, 0.1), Param("method.lr", 1e-3, 0.1)), "twice"),
])
def test_an_invalid_space_is_one_line(space, message):
    cls = METHODS.get("dpsh")
    with pytest.raises(SchnError, match=message):
        check_space(space, {"method": cls.config_class, "train": TrainConfig}, 32, "dpsh")


def test_the_first_trial_of_a_study_is_the_configs_own_values_clipped_into_the_space():
    raw = load_config(CONFIG).to_dict()
    raw["method"], raw["train"]["num_samples"] = {"name": "dsh", "weight_decay": 0.0, "margin": 64.0}, 10
    cfg = config_from_dict(raw)
    space = METHODS.get("dsh").search_space + (Param("train.num_samples", 500, 20_000, log=True, integer=True),)
    params = tune_mod.default_params(cfg, space, 32)
    assert params["method.lr"] == cfg.method.lr and params["train.batch_size"] == cfg.train.batch_size
    assert params["method.weight_decay"] == 1e-7  # 0 lies below the log range: its low end
    assert params["train.num_samples"] == 500 and isinstance(params["train.num_samples"], int)
    assert params["method.margin"] == 2.0  # per-bit: 64 at 32 bits, in units of the code length


def test_a_study_writes_its_outputs_and_best_yaml_trains(tmp_path, capsys):
    out = tmp_path / "itq"
    lines = []
    result = tune_mod.tune(CONFIG, "itq", 16, 3, out, sets=QUICK, echo=lines.append)
    assert result.complete == 3 and result.best_value is not None
    assert lines[0].startswith("tune itq: 0 of 3 trials finished, 3 to run")
    assert all("best" in line and "ETA" in line for line in lines[1:]) and len(lines) == 4
    table = rows(out)
    assert [r["state"] for r in table] == ["complete"] * 3
    assert {"method.iterations", "value", "seconds", "train_seconds", "val_seconds"} <= set(table[0])
    best = json.loads((out / "best.json").read_text())
    assert best["value"] == max(float(r["value"]) for r in table)
    assert best["params"]["method.iterations"] == int(table[best["trial"]]["method.iterations"])
    assert table[0]["method.iterations"] == str(METHODS.get("itq").config_class().iterations)  # the default
    assert (out / "history.png").stat().st_size > 0 and (out / "importance.png").stat().st_size > 0
    cfg = load_config(out / "best.yaml")
    assert cfg.method_name == "itq" and cfg.method.iterations == best["params"]["method.iterations"]
    assert cfg.train.bits == 16 and cfg.run.name is None
    assert main(["train", "--config", str(out / "best.yaml"), "--set", f"run.out_dir={tmp_path / 'runs'}",
                 "--quiet"]) == 0
    assert "mAP@all" in capsys.readouterr().out


def test_rerunning_continues_the_study_and_a_crashed_trial_is_lost_alone(tmp_path):
    out = tmp_path / "itq"
    tune_mod.tune(CONFIG, "itq", 16, 2, out, sets=QUICK, echo=quiet)
    first = rows(out)
    # a tuner killed mid-trial leaves a RUNNING trial behind
    study = optuna.load_study(study_name=tune_mod.STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")
    study.ask()
    lines = []
    result = tune_mod.tune(CONFIG, "itq", 16, 4, out, sets=QUICK, echo=lines.append)
    assert lines[0].startswith("tune itq: 2 of 4 trials finished, 2 to run")
    table = rows(out)
    assert table[:2] == first  # the finished trials are kept as they were
    assert [r["state"] for r in table] == ["complete", "complete", "fail", "complete", "complete"]
    assert result.complete == 4 and result.failed == 1
    again = []
    tune_mod.tune(CONFIG, "itq", 16, 4, out, sets=QUICK, echo=again.append)  # --trials is the total
    assert again == ["tune itq: 4 of 4 trials finished, 0 to run"]


class PruneAfterFirstValidation(optuna.pruners.BasePruner):
    """Lets trial 0 run; stops every later trial at its first report."""

    def prune(self, study, trial) -> bool:
        return trial.number > 0 and bool(trial.intermediate_values)


def test_the_pruner_stops_a_trial_after_the_validation_it_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(tune_mod, "_pruner", lambda name: PruneAfterFirstValidation())
    out = tmp_path / "dpsh"
    result = tune_mod.tune(CONFIG, "dpsh", 16, 2, out, sets=["train.iterations=3", "split.val_size=100"],
                           echo=quiet)
    table = rows(out)
    assert [r["state"] for r in table] == ["complete", "pruned"]
    assert table[0]["last_reported_iteration"] == "3" and table[1]["last_reported_iteration"] == "1"
    assert result.pruned == 1 and result.complete == 1


def test_the_last_iteration_is_never_pruned(tmp_path, monkeypatch):
    """A pruner that wants every report pruned cannot discard a finished fit: a shallow method's
    only iteration (and a deep method's last) completes."""
    monkeypatch.setattr(tune_mod, "_pruner", lambda name: PruneAfterFirstValidation())
    result = tune_mod.tune(CONFIG, "itq", 16, 2, tmp_path / "itq", sets=QUICK, echo=quiet)
    assert [r["state"] for r in rows(tmp_path / "itq")] == ["complete", "complete"]
    assert result.pruned == 0


def test_the_median_pruner_is_wired_to_the_engine_reports(tmp_path):
    """Optuna's median pruner, as `schn tune` configures it, sees one value per outer iteration."""
    pruner = tune_mod._pruner("median")
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    assert isinstance(tune_mod._pruner("halving"), optuna.pruners.SuccessiveHalvingPruner)
    out = tmp_path / "dpsh"
    tune_mod.tune(CONFIG, "dpsh", 16, 1, out, sets=["train.iterations=3", "split.val_size=100"], echo=quiet)
    study = optuna.load_study(study_name=tune_mod.STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")
    assert sorted(study.trials[0].intermediate_values) == [1, 2, 3]


def test_the_study_never_looks_at_the_queries(tmp_path, monkeypatch):
    """Shuffling (here: replacing) the query items' labels changes nothing in a study, and no
    trial encodes or scores the query split."""
    import schn.data as data_mod
    import schn.evaluate as evaluate_mod

    def never(*args, **kwargs):
        raise AssertionError("a trial evaluated on the query split")

    monkeypatch.setattr(evaluate_mod, "evaluate_method", never)
    a, b = tmp_path / "a", tmp_path / "b"
    sets = ["train.iterations=2", "split.val_size=100"]
    tune_mod.tune(CONFIG, "dpsh", 16, 2, a, sets=sets, echo=quiet)
    query = np.asarray(json.loads((a / "split.json").read_text())["query"])
    b.mkdir()
    shutil.copy(a / "split.json", b / "split.json")
    real = data_mod.create_dataset

    def with_scrambled_queries(cfg):
        dataset = real(cfg)
        rng = np.random.default_rng(7)
        labels = np.zeros_like(dataset.labels[query])
        labels[np.arange(len(query)), rng.integers(0, labels.shape[1], len(query))] = 1
        dataset.labels[query] = labels
        return dataset

    monkeypatch.setattr(data_mod, "create_dataset", with_scrambled_queries)
    tune_mod.tune(CONFIG, "dpsh", 16, 2, b, sets=sets, echo=quiet)
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in rows(a)]
    assert strip == [{k: v for k, v in r.items() if "seconds" not in k} for r in rows(b)]


def test_a_searched_key_fixed_by_set_is_not_searched(tmp_path):
    out = tmp_path / "sdh"
    tune_mod.tune(CONFIG, "sdh", 16, 1, out, sets=[*QUICK, "method.num_anchors=50"], echo=quiet)
    best = json.loads((out / "best.json").read_text())
    assert "method.num_anchors" not in best["params"] and "method.lam" in best["params"]
    assert load_config(out / "best.yaml").method.num_anchors == 50


def test_show_space_and_list(capsys):
    assert main(["tune", "--show-space", "dsh"]) == 0
    text = capsys.readouterr().out
    assert "method.margin: float 0.5..4 x bits (log)" in text and "method.lr" in text
    assert main(["tune", "--show-space", "lsh"]) == 0
    assert "no hyper-parameters" in capsys.readouterr().out


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_input_is_one_line(tmp_path, capsys):
    base = ["tune", "--config", str(CONFIG), "--bits", "16", "--trials", "1", "--set", "train.iterations=1"]
    assert "unknown method 'nope' (--method)" in one_line_error(capsys, [*base, "--method", "nope", "-o", str(tmp_path / "x")])
    assert "nothing to tune" in one_line_error(capsys, [*base, "--method", "lsh", "-o", str(tmp_path / "x")])
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"method.lr": {"low": 1e-3, "high": 50.0}}))
    assert "own range" in one_line_error(capsys, [*base, "--method", "dpsh", "--space", str(space),
                                                  "-o", str(tmp_path / "x")])
    space.write_text("method.lr: 3\n")
    assert "needs low and high" in one_line_error(capsys, [*base, "--method", "dpsh", "--space", str(space),
                                                           "-o", str(tmp_path / "x")])
    err = one_line_error(capsys, [*base, "--method", "itq", "-o", str(tmp_path / "x"),
                                  "--storage", "nosuchdialect://somewhere"])
    assert "cannot open the study storage" in err
    assert "--trials 0 is out of range" in one_line_error(
        capsys, ["tune", "--config", str(CONFIG), "--method", "itq", "--trials", "0", "-o", str(tmp_path / "x")])
    assert "has none; set split.val_size" in one_line_error(
        capsys, [*base, "--method", "itq", "-o", str(tmp_path / "v"), "--set", "split.val_size=0"])
    assert "needs --config" in one_line_error(capsys, ["tune", "--method", "itq", "-o", str(tmp_path / "x")])
    assert "--pruner 'bogus'" in one_line_error(capsys, [*base, "--method", "itq", "-o", str(tmp_path / "x"),
                                                         "--pruner", "bogus"])


def test_a_study_made_for_another_method_bits_or_data_is_refused(tmp_path, capsys):
    out = tmp_path / "study"
    base = ["tune", "--config", str(CONFIG), "--trials", "1", "-o", str(out), "--set", "train.iterations=1"]
    assert main([*base, "--method", "itq", "--bits", "16"]) == 0
    capsys.readouterr()
    assert "created for another method ('itq'" in one_line_error(capsys, [*base, "--method", "sdh", "--bits", "16"])
    assert "created for another bits (16" in one_line_error(capsys, [*base, "--method", "itq", "--bits", "32"])
    url = f"sqlite:///{out / 'study.db'}"
    identity = optuna.load_study(study_name=tune_mod.STUDY_NAME, storage=url).user_attrs
    with pytest.raises(SchnError, match="created for another data"):
        tune_mod.open_study(url, "median", 0, {**identity, "data": "image_folder:0123"})
    err = one_line_error(capsys, [*base, "--method", "itq", "--bits", "16", "--set", "train.batch_size=32"])
    assert "another schedule (train.batch_size was 64, now 32)" in err
    # an option schn gained since the study began keeps its default: not a different schedule
    older = yaml.safe_load(identity["schedule"])
    del older["train"]["early_stopping"]
    tune_mod.open_study(url, "median", 0, {**identity, "schedule": yaml.safe_dump(older)})
