"""``schn encode`` at scale: chunks streamed to disk, resumed after a crash with every item written
exactly once, and two processes under torchrun giving the same file as one."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schn.cli import main
from schn.encode import ImageEncoder

N = 45  # files; chunks of 8: five full and one of 5


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("many")
    for i, img in enumerate(load_digits().images[:N]):
        Image.fromarray((img * 255 / 16).astype(np.uint8)).save(folder / f"d{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def whole(digits_run, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "codes.npz"
    assert main(["encode", str(digits_run), str(images), "-o", str(out), "--chunk-size", "8", "--quiet"]) == 0
    return out


def load(path):
    with np.load(path) as f:
        return f["codes"], f["ids"].tolist()


def test_chunked_output_equals_one_pass(digits_run, images, whole, tmp_path):
    codes, ids = load(whole)
    assert ids == sorted(str(p) for p in images.iterdir()) and codes.shape == (N, 2)
    assert not Path(str(whole) + ".parts").exists()  # merged, then removed
    one = tmp_path / "one.npz"
    assert main(["encode", str(digits_run), str(images), "-o", str(one), "--chunk-size", "1000", "--workers", "2",
                 "--quiet"]) == 0
    assert np.array_equal(load(one)[0], codes) and load(one)[1] == ids


def test_a_crashed_encode_resumes_and_writes_each_item_once(digits_run, images, whole, tmp_path, monkeypatch):
    calls, crash = [], [True]
    encode = ImageEncoder.encode_readable

    def crash_on_the_third_chunk(self, items, *args, **kwargs):
        calls.append(len(items))
        if len(calls) == 3 and crash and crash.pop():
            raise KeyboardInterrupt
        return encode(self, items, *args, **kwargs)

    monkeypatch.setattr(ImageEncoder, "encode_readable", crash_on_the_third_chunk)
    out = tmp_path / "codes.npz"
    args = ["encode", str(digits_run), str(images), "-o", str(out), "--chunk-size", "8", "--quiet"]
    assert main(args) == 130
    parts = tmp_path / "codes.npz.parts"
    assert sorted(p.name for p in parts.glob("chunk-*.npz")) == ["chunk-0000000.npz", "chunk-0000001.npz"]
    assert not out.exists()
    calls.clear()
    assert main(args) == 0
    assert calls == [8, 8, 8, 5]  # only the chunks not yet written
    codes, ids = load(out)
    assert ids == load(whole)[1] and len(set(ids)) == N and np.array_equal(codes, load(whole)[0])
    assert not parts.exists()


def test_a_stopped_encode_of_other_files_is_not_mixed_in(digits_run, images, whole, tmp_path, capsys):
    out = tmp_path / "codes.npz"
    (tmp_path / "codes.npz.parts").mkdir()
    (tmp_path / "codes.npz.parts" / "plan.json").write_text('{"files": 3}')
    (tmp_path / "codes.npz.parts" / "chunk-0000000.npz").write_bytes(b"a chunk of those other files")
    assert main(["encode", str(digits_run), str(images), "-o", str(out), "--quiet"]) == 0
    assert "other files" in capsys.readouterr().out  # said, then started afresh
    assert load(out)[1] == load(whole)[1] and np.array_equal(load(out)[0], load(whole)[0])


def test_two_processes_under_torchrun_give_the_same_file(digits_run, images, whole, tmp_path):
    out = tmp_path / "codes.npz"
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "schn", "encode",
                           str(digits_run), str(images), "-o", str(out), "--chunk-size", "8"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[0] chunk" in done.stdout and "[1] chunk" in done.stdout  # both processes encoded
    assert done.stdout.count("wrote 45 codes") == 1  # one report, from the first process
    codes, ids = load(out)
    assert ids == load(whole)[1] and np.array_equal(codes, load(whole)[0])
