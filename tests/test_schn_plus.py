"""schn-plus: SCHN with other defaults; the paper's schn keeps method.md's. (Its loss, update against
brute force, save/load and resume run in test_schn_method / test_schn_update / test_contracts /
test_resume with every registered method.)"""
import dataclasses
import json

import numpy as np
from conftest import DIGITS, train_in_one_and_two_processes

from schn.cli import main
from schn.methods import METHODS, SCHNConfig, SCHNPlusConfig

# pixels into a linear hash layer (no batch norm), as test_distributed: one and two processes agree
FAST = ["--set", "method.name=schn-plus", "--set", "train.iterations=3", "--set", "train.bits=16",
        "--set", "train.epochs_per_iteration=1", "--set", "model.backbone=pixels", "--set", "train.num_samples=300",
        "--set", "method.lr=1e-3"]


def test_the_paper_schn_keeps_method_md_and_schn_plus_departs_only_in_its_update_scope():
    paper, plus = dataclasses.asdict(SCHNConfig()), dataclasses.asdict(SCHNPlusConfig())
    assert (paper["update_scope"], paper["pairing"], paper["detach_cycle_inputs"], paper["label_target_weight"]) == (
        "sampled", "batch", True, 0.0)
    assert {k for k in paper if paper[k] != plus[k]} == {"update_scope"} and plus["update_scope"] == "database"


def test_schn_plus_searches_alpha_and_beta_up_to_the_scale_of_the_similarity_term():
    ranges = {p.key: p.high for p in METHODS.get("schn-plus").search_space}
    assert ranges["method.alpha"] == ranges["method.beta"] == 1e5
    paper = {p.key: p.high for p in METHODS.get("schn").search_space}
    assert (paper["method.alpha"], paper["method.beta"]) == (1e3, 1e2)


def test_schn_plus_learns_on_digits_and_updates_every_code_each_iteration(tmp_path):
    assert main(["train", "--config", DIGITS, *FAST, "--set", f"run.out_dir={tmp_path}", "--set", "run.name=r",
                 "--quiet"]) == 0
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    updated = {entry["codes_updated"] for entry in log}
    assert len(log) == 3 and len(updated) == 1 and updated.pop() > 300  # the whole pool, not the 300 sampled
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["map"] > 0.4  # random codes score ~0.1 on 10 classes (measured 0.50)


def test_schn_plus_under_torchrun_trains_as_one_process(tmp_path):
    train_in_one_and_two_processes(tmp_path, FAST)
    with np.load(tmp_path / "one" / "codes.npz") as a, np.load(tmp_path / "two" / "codes.npz") as b:
        same = (np.unpackbits(a["database_codes"], axis=1) == np.unpackbits(b["database_codes"], axis=1)).mean()
    assert same >= 0.99, same
