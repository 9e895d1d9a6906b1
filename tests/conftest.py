"""Fixtures shared by test files."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")
FAST = ["--set", "train.iterations=2", "--set", "train.bits=16", "--set", "train.epochs_per_iteration=1"]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A tiny 16-bit SCHN run on digits, trained once per test session by the CLI."""
    from schn.cli import main

    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "--config", DIGITS, *FAST, "--set", f"run.out_dir={out}", "--set", "run.name=r1", "--quiet"]) == 0
    return out / "r1"
