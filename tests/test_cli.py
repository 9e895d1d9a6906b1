"""The CLI end to end on the embedded digits data (tiny budget)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schn.cli import main

from conftest import DIGITS, FAST


@pytest.fixture(scope="module")
def run_dir(digits_run):
    return digits_run  # conftest.py: one tiny trained run for the session


def test_train_writes_the_run_folder(run_dir):
    for name in ("config.yaml", "split.json", "log.jsonl", "checkpoint.pt", "metrics.json", "curves.json", "codes.npz"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("map", "map_depth", "precision_at_radius_2", "bits", "train_seconds", "images_per_second"):
        assert key in metrics, key
    assert metrics["bits"] == 16 and 0 <= metrics["map"] <= 1
    assert metrics["model_selection"] == "val" and "symmetric" in metrics
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2]
    for key in ("loss_image", "loss_label", "loss_latent", "val_map", "seconds", "images_per_second"):
        assert key in log[0], key
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["query"]) + len(split["database"]) == 1797


def test_evaluate_recomputes_identical_metrics_and_codes(run_dir, capsys):
    before = json.loads((run_dir / "metrics.json").read_text())
    codes_before = dict(np.load(run_dir / "codes.npz"))
    assert main(["evaluate", str(run_dir), "--quiet"]) == 0
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["map"] == before["map"]
    assert after["symmetric"]["map"] == before["symmetric"]["map"]
    codes_after = np.load(run_dir / "codes.npz")
    for key in ("query_codes", "database_codes"):
        assert (codes_after[key] == codes_before[key]).all()
    assert "mAP@all" in capsys.readouterr().out


def test_encode_writes_packed_codes_with_ids(run_dir, tmp_path):
    from sklearn.datasets import load_digits

    images = load_digits().images[:5]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray((img * 255 / 16).astype(np.uint8)).save(folder / f"d{i}.png")
    out = tmp_path / "codes.npz"
    assert main(["encode", str(run_dir), str(folder), "-o", str(out), "--quiet"]) == 0
    data = np.load(out)
    assert data["codes"].shape == (5, 2) and data["codes"].dtype == np.uint8
    assert [Path(p).name for p in data["ids"]] == [f"d{i}.png" for i in range(5)]
    assert int(data["bits"]) == 16
    # encoding the same images again gives identical codes
    again = tmp_path / "again.npz"
    assert main(["encode", str(run_dir), *sorted(map(str, folder.iterdir())), "-o", str(again), "--quiet"]) == 0
    assert (np.load(again)["codes"] == data["codes"]).all()


def test_plot_writes_pngs(run_dir):
    assert main(["plot", str(run_dir)]) == 0
    pngs = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    assert pngs == ["pr_curve.png", "precision_at_n.png", "tsne_queries.png"]


@pytest.mark.parametrize("args, message", [
    (["train", "--config", DIGITS, "--set", "train.bitz=3"], "unknown config key train.bitz"),
    (["train", "--config", DIGITS, "--set", "data.name=image_folder", "--set", "data.root=/no/such/folder"],
     "does not exist"),
    (["train", "--config", "/no/such.yaml"], "config file /no/such.yaml does not exist"),
    (["evaluate", "/no/such/run"], "does not exist"),
    (["encode", "/no/such/run", "x.png", "-o", "out.npz"], "does not exist"),
])
def test_user_errors_are_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err


def test_console_entry_point_reports_bad_key_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "schn", "train", "--config", DIGITS, "--set", "model.backbon=x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown config key model.backbon")
    assert "Traceback" not in proc.stderr


def test_encode_refuses_unreadable_image(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert main(["encode", str(run_dir), str(bad), "-o", str(tmp_path / "o.npz"), "--quiet"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def test_saved_split_is_reused_by_path(run_dir, tmp_path):
    split_file = run_dir / "split.json"
    args = ["train", "--config", DIGITS, *FAST, "--set", f"split.file={split_file}", "--set", "split.seed=123",
            "--set", f"run.out_dir={tmp_path}", "--set", "run.name=again", "--quiet"]
    assert main(args) == 0
    assert json.loads((tmp_path / "again" / "split.json").read_text()) == json.loads(split_file.read_text())


def test_bad_image_inside_dataloader_workers_is_still_one_line(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "4.png").write_bytes(b"garbage")
    args = ["train", "--config", DIGITS, *FAST, "--set", "data.name=image_folder",
            "--set", f"data.root={tmp_path / 'data'}", "--set", "split.protocol=random", "--set", "split.query_size=1",
            "--set", "split.val_size=0", "--set", "train.num_workers=1", "--set", f"run.out_dir={tmp_path}", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "4.png" in err and "\n" not in err and "Traceback" not in err


def test_unwritable_output_is_one_line(run_dir, tmp_path, capsys):
    image = tmp_path / "d.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is needed")
    code = main(["encode", str(run_dir), str(image), "-o", str(blocker / "x.npz"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "blocker" in err and "\n" not in err


@pytest.mark.parametrize("select, log_key", [("last", None), ("test", "query_map_for_selection")])
def test_other_model_selections_are_labelled(select, log_key, tmp_path):
    args = ["train", "--config", DIGITS, *FAST, "--set", f"train.select={select}",
            "--set", f"run.out_dir={tmp_path}", "--set", "run.name=s", "--quiet"]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics["model_selection"] == select
    log = [json.loads(line) for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert all("val_map" not in r for r in log)
    if log_key:
        assert all(log_key in r for r in log)
    else:
        assert metrics["selected_iteration"] == 2


def test_time_budget_stops_training_at_the_first_batch_past_it(tmp_path):
    args = ["train", "--config", DIGITS, *FAST, "--set", "train.iterations=5", "--set", "train.time_budget=0.001",
            "--set", "train.val_pool_size=50", "--set", f"run.out_dir={tmp_path}", "--set", "run.name=b", "--quiet"]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["iterations_run"] == 1 and metrics["stopped_by_time_budget"] is True
    assert metrics["selected_iteration"] == 1 and metrics["encode_items_per_second"] > 0
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and "val_map" in log[0]


def test_bad_time_budget_is_one_line(capsys):
    code = main(["train", "--config", DIGITS, "--set", "train.time_budget=0"])
    err = capsys.readouterr().err
    assert code == 2 and "train.time_budget must be a positive number" in err
