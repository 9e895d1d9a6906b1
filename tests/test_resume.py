"""``schn train --resume``: a run killed with SIGKILL mid-training, then resumed, ends exactly as
the uninterrupted run with the same seed (CPU, one process)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from conftest import DIGITS, child_process

from schn.cli import main
from schn.methods import METHODS, list_methods

SETTINGS = ["--set", "train.iterations=6", "--set", "train.bits=16", "--set", "train.epochs_per_iteration=1",
            "--set", "method.variant=tomm"]  # the adversarial steps too: more state to restore


def losses(run):
    return [{k: v for k, v in json.loads(line).items() if not k.endswith(("seconds", "images_per_second"))}
            for line in (run / "log.jsonl").read_text().splitlines()]


def test_kill_9_then_resume_equals_the_uninterrupted_run(tmp_path, capsys):
    assert main(["train", "--config", DIGITS, *SETTINGS, "--set", f"run.out_dir={tmp_path}", "--set", "run.name=whole",
                 "--quiet"]) == 0
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert not (whole / "resume.pt").exists()  # a finished run keeps only its checkpoint

    command = [sys.executable, "-m", "schn", "train", "--config", DIGITS, *SETTINGS, "--set", f"run.out_dir={tmp_path}",
               "--set", "run.name=broken", "--quiet"]
    with child_process(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as child:
        deadline = time.monotonic() + 120
        while True:
            assert child.poll() is None, child.stderr.read().decode()
            state = broken / "resume.pt"
            if state.is_file() and torch.load(state, weights_only=False)["iterations_done"] >= 2:
                break
            assert time.monotonic() < deadline, "training did not reach its second iteration in 120 s"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    assert not (broken / "checkpoint.pt").exists(), "the run finished before it was killed"

    capsys.readouterr()
    assert main(["train", "--resume", str(broken), "--quiet"]) == 0
    assert not (broken / "resume.pt").exists()
    with np.load(whole / "codes.npz") as a, np.load(broken / "codes.npz") as b:
        for key in ("database_codes", "query_codes"):
            assert np.array_equal(a[key], b[key]), key
    state_a = torch.load(whole / "checkpoint.pt", weights_only=False)["state"]
    state_b = torch.load(broken / "checkpoint.pt", weights_only=False)["state"]
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert losses(whole) == losses(broken)  # every iteration logged once, with the same losses
    metrics_a, metrics_b = (json.loads((run / "metrics.json").read_text()) for run in (whole, broken))
    assert metrics_a["map"] == metrics_b["map"] and metrics_b["iterations_run"] == 6


@pytest.mark.parametrize("setup,words", [("finished", "has finished"), ("fresh", "no config.yaml"),
                                         ("early", "no split.json")])
def test_resume_mistakes_end_in_one_line(digits_run, tmp_path, capsys, setup, words):
    run = {"finished": digits_run, "fresh": tmp_path}.get(setup)
    if setup == "early":
        run = tmp_path / "early"
        run.mkdir()
        (run / "config.yaml").write_text((digits_run / "config.yaml").read_text())
    assert main(["train", "--resume", str(run)]) == 2
    assert words in capsys.readouterr().err


def test_train_needs_config_or_resume(capsys):
    assert main(["train"]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(["train", "--resume", "x", "--set", "train.bits=8"]) == 2
    assert "--set" in capsys.readouterr().err


class Crash(Exception):
    pass


@pytest.mark.parametrize("name", list_methods())
def test_every_method_resumes_exactly(name, tmp_path, monkeypatch):
    """A crash right after the state of iteration 2 is saved; the resumed run equals the whole one."""
    from schn import resume as resume_mod
    from schn.config import load_config
    from schn.runs import train_run

    raw = yaml.safe_load(open(DIGITS))
    raw["method"] = {"name": name}  # that method's own defaults
    if METHODS.get(name).family == "shallow":
        raw["model"] = {"backbone": "pixels"}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    settings = ["train.iterations=3", "train.bits=8", "train.epochs_per_iteration=1", "train.num_samples=300",
                "split.val_size=50", f"run.out_dir={tmp_path}", "run.progress=false"]
    whole, _ = train_run(load_config(config, [*settings, "run.name=whole"]), progress=False)
    capture = resume_mod.capture

    def crash_after_second(path, done, *args):
        capture(path, done, *args)
        if done == 2:
            raise Crash

    monkeypatch.setattr(resume_mod, "capture", crash_after_second)
    with pytest.raises(Crash):
        train_run(load_config(config, [*settings, "run.name=broken"]), progress=False)
    monkeypatch.setattr(resume_mod, "capture", capture)
    broken, _ = train_run(None, progress=False, resume_dir=tmp_path / "broken")
    with np.load(whole / "codes.npz") as a, np.load(broken / "codes.npz") as b:
        assert np.array_equal(a["database_codes"], b["database_codes"])
        assert np.array_equal(a["query_codes"], b["query_codes"])
    assert losses(whole) == losses(broken)
