"""Defects found by trying the tool as an attacker and as a careless user would (issue 12):
planted pickles, out-of-range options, half-written run folders, decompression bombs, closed pipes."""
import dataclasses
import os
import pickle
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from schn.bounds import RANGE, numeric_fields
from schn.cli import main
from schn.config import SECTIONS, Config, load_config
from schn.errors import SchnError

from conftest import DIGITS, FAST


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---- every numeric option has a range, refused in one line before any work -----------------------
def config_classes():
    from schn.methods import METHODS

    sections = {f.name: f.type for f in dataclasses.fields(Config) if f.name in SECTIONS and f.name != "method"}
    defaults = Config()
    classes = {name: type(getattr(defaults, name)) for name in sections}
    classes.update({f"method:{name}": METHODS.get(name).config_class for name in METHODS.names()})
    return classes


@pytest.mark.parametrize("name, cls", sorted(config_classes().items()))
def test_every_numeric_option_declares_its_range(name, cls):
    missing = [field for field, f in numeric_fields(cls).items() if RANGE not in f.metadata]
    assert not missing, f"{name}: numeric options without a range: {missing}"


def out_of_range_overrides():
    """For every bounded option of every section (each method's own too): a value past each end."""
    for name, cls in sorted(config_classes().items()):
        section, method = (name.split(":") + [None])[:2] if ":" in name else (name, None)
        for field, f in numeric_fields(cls).items():
            lo, hi, above = f.metadata[RANGE]
            for value in ([lo] if above else [lo - 1] if lo is not None else []) + ([hi * 2 + 1] if hi else []):
                yield pytest.param(method, f"{section}.{field}={value}", id=f"{name}.{field}={value}")


@pytest.mark.parametrize("method, override", list(out_of_range_overrides()))
def test_out_of_range_values_are_one_line_errors(method, override):
    with pytest.raises(SchnError) as info:
        load_config(None, ([f"method.name={method}"] if method else []) + [override])
    assert "\n" not in str(info.value) and override.split("=")[0].split(".")[1] in str(info.value)


@pytest.mark.parametrize("override", ["method.lr=nan", "train.time_budget=inf", "train.bits=1e400",
                                      "train.bits=100000", f"train.bits={10**30}", "run.seed=-1"])
def test_non_finite_and_huge_numbers_are_refused(override, tmp_path, capsys):
    assert main(["train", "--config", DIGITS, "--set", override, "--set", f"run.out_dir={tmp_path}"]) == 2
    one_line_error(capsys)
    assert not any(tmp_path.iterdir()), "nothing may be written before the options are checked"


# ---- no pickle that a user or attacker could have written is ever run ---------------------------
class Planted:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path, fmt: str, legacy: bool) -> None:
    payload = {"format": fmt, "payload": Planted(marker)}
    if legacy:  # a plain pickle, not torch's zip container
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)


@pytest.mark.parametrize("legacy", [False, True], ids=["torch-zip", "plain-pickle"])
def test_a_planted_checkpoint_never_runs(digits_run, tmp_path, capsys, legacy):
    run = shutil.copytree(digits_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    plant(run / "checkpoint.pt", marker, "schn-checkpoint-1", legacy)
    assert main(["evaluate", str(run), "--quiet"]) == 2
    assert not marker.exists(), "the planted pickle ran"
    assert "refusing to read" in one_line_error(capsys)
    image = tmp_path / "d.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    assert main(["encode", str(run), str(image), "-o", str(tmp_path / "c.npz"), "--quiet"]) == 2
    assert not marker.exists()
    capsys.readouterr()


def test_a_planted_resume_state_never_runs(digits_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "split.json"):
        shutil.copy(digits_run / name, run / name)
    marker = tmp_path / "pwned"
    plant(run / "resume.pt", marker, "schn-resume-1", legacy=False)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert not marker.exists()
    assert "refusing to read" in one_line_error(capsys)


def test_a_planted_weights_file_never_runs(tmp_path, capsys):
    marker, weights = tmp_path / "pwned", tmp_path / "w.pt"
    plant(weights, marker, "x", legacy=False)
    assert main(["train", "--config", DIGITS, *FAST, "--set", f"model.weights={weights}",
                 "--set", f"run.out_dir={tmp_path / 'runs'}", "--quiet"]) == 2
    assert not marker.exists()
    one_line_error(capsys)


def test_the_allow_list_still_reads_what_schn_writes(tmp_path):
    """A resume state holds NumPy arrays and RNG states; they load under weights_only."""
    from schn.fileio import read_torch

    state = {"format": "f", "queue": np.arange(5), "sampled": np.ones(3, bool), "numpy_rng": np.random.get_state(),
             "floats": np.zeros(2, np.float32), "tensor": torch.ones(2)}
    torch.save(state, tmp_path / "s.pt")
    back = read_torch(tmp_path / "s.pt", "f", "resume state", "train again")
    assert np.array_equal(back["queue"], state["queue"]) and back["numpy_rng"][0] == "MT19937"
    torch.save({"format": "f", "objects": np.array([Path("x")], dtype=object)}, tmp_path / "o.pt")
    with pytest.raises(SchnError, match="refusing to read"):
        read_torch(tmp_path / "o.pt", "f", "resume state", "train again")


# ---- a run that fails or is killed before its first iteration blocks nothing ---------------------
@pytest.fixture
def bad_data(tmp_path):
    """Eight small images, two of them garbage: training stops at one in its first iteration."""
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    for i in range(8):
        Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(folder / f"{i}.png")
    for i in (6, 7):
        (folder / f"{i}.png").write_bytes(b"garbage")
    return tmp_path / "data"


def train_on(data: Path, out: Path, name: str) -> list[str]:
    return ["train", "--config", DIGITS, *FAST, "--set", "data.name=image_folder", "--set", f"data.root={data}",
            "--set", "split.protocol=random", "--set", "split.query_size=1", "--set", "split.val_size=0",
            "--set", f"run.out_dir={out}", "--set", f"run.name={name}", "--quiet"]


def test_a_run_failing_before_its_first_iteration_leaves_nothing(bad_data, tmp_path, capsys):
    assert main(train_on(bad_data, tmp_path / "runs", "r")) == 2
    assert ".png" in one_line_error(capsys)
    assert not (tmp_path / "runs" / "r").exists()
    for i in (6, 7):
        (bad_data / "a" / f"{i}.png").unlink()
    assert main(train_on(bad_data, tmp_path / "runs", "r")) == 0  # the same name is free again


def test_a_run_killed_before_its_first_iteration_resumes_from_the_start(digits_run, tmp_path, capsys):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    for name in ("config.yaml", "split.json"):  # what kill -9 during the first iteration leaves
        shutil.copy(digits_run / name, run / name)
    (run / "log.jsonl").write_text("")
    assert main(["train", "--config", DIGITS, "--set", f"run.out_dir={tmp_path / 'runs'}", "--set", "run.name=r"]) == 2
    assert "--resume" in one_line_error(capsys)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert (run / "checkpoint.pt").is_file() and len((run / "log.jsonl").read_text().splitlines()) == 2


def test_a_folder_of_the_users_is_never_cleaned_up(bad_data, tmp_path, capsys):
    """A failed run in an empty folder the user made: the run's own files go, the folder stays."""
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    assert main(train_on(bad_data, tmp_path / "runs", "mine")) == 2
    capsys.readouterr()
    assert (tmp_path / "runs" / "mine").is_dir() and not any((tmp_path / "runs" / "mine").iterdir())


# ---- decompression bombs, encode options ----------------------------------------------------------
def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 50 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    return folder


def test_a_decompression_bomb_is_one_line_and_leaves_nothing(digits_run, images, tmp_path, capsys):
    out = tmp_path / "codes.npz"
    assert main(["encode", str(digits_run), str(images), "-o", str(out), "--quiet"]) == 2
    assert "bomb.png" in one_line_error(capsys)
    assert not out.exists() and not Path(f"{out}.parts").exists()
    (images / "bomb.png").unlink()
    assert main(["encode", str(digits_run), str(images), "-o", str(out), "--quiet"]) == 0
    assert len(np.load(out)["ids"]) == 4


def test_bad_images_can_be_skipped_and_counted(digits_run, images, tmp_path, capsys):
    (images / "junk.png").write_bytes(b"not an image")
    out = tmp_path / "codes.npz"
    assert main(["encode", str(digits_run), str(images), "-o", str(out), "--on-bad-image", "skip", "--quiet"]) == 0
    assert "skipped 2 unreadable images" in capsys.readouterr().out
    ids = np.load(out)["ids"].tolist()
    assert len(ids) == 4 and not any("bomb" in i or "junk" in i for i in ids)


def test_search_by_a_bomb_image_is_one_line(stored_index, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(100_000, 100_000))
    assert main(["search", str(stored_index), "--image", str(bomb)]) == 2
    assert "bomb.png" in one_line_error(capsys)


def test_a_changed_file_list_starts_afresh(digits_run, images, tmp_path, capsys):
    (images / "bomb.png").unlink()
    out = tmp_path / "codes.npz"
    parts = Path(f"{out}.parts")
    parts.mkdir()
    (parts / "plan.json").write_text('{"files": 9}')  # a stopped encode of other files
    (parts / "chunk-0000000.npz").write_bytes(b"old")
    (parts / "notes.txt").write_text("the user's")
    assert main(["encode", str(digits_run), str(images), "-o", str(out)]) == 0
    assert "starting afresh" in capsys.readouterr().out
    assert len(np.load(out)["ids"]) == 4
    assert (parts / "notes.txt").read_text() == "the user's"  # never removed: the tool did not write it


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--workers", "-1"), ("--chunk-size", "0"),
                                           ("--batch-size", "-3")])
def test_bad_encode_options_are_one_line_and_leave_nothing(digits_run, images, tmp_path, capsys, option, value):
    out = tmp_path / "codes.npz"
    assert main(["encode", str(digits_run), str(images), "-o", str(out), option, value]) == 2
    assert option in one_line_error(capsys)
    assert not Path(f"{out}.parts").exists() and not out.exists()


# ---- smaller ones -------------------------------------------------------------------------------
def test_search_into_a_closed_pipe_exits_quietly(stored_index):
    from schn.index import HammingIndex

    first = HammingIndex.open(stored_index).ids[0]
    # every item (well past a pipe's 64 KiB buffer), read up to the first line
    cmd = f"{sys.executable} -m schn search {stored_index} --id {first} --radius 16 | head -1"
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("query") and proc.stderr == ""
    assert proc.returncode == 141  # what a Unix tool ended by SIGPIPE reports


def test_written_files_respect_the_umask(tmp_path):
    from schn.fileio import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("option, value", [("--time-budget", "-5"), ("--time-budget", "nan"), ("--curve-bits", "0"),
                                           ("--bits", "0"), ("--bits", "4096")])
def test_bad_benchmark_options_write_nothing(tmp_path, capsys, option, value):
    out = tmp_path / "grid"
    args = ["benchmark", "--config", DIGITS, "--methods", "lsh", "--bits", "16", "-o", str(out), option, value]
    assert main(args) == 2
    one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("option", [["-k", "0"], ["-k", "-4"], ["--radius", "-1"]])
def test_bad_search_options_are_one_line(stored_index, capsys, option):
    assert main(["search", str(stored_index), "--id", "x", *option]) == 2
    assert option[0] in one_line_error(capsys)
