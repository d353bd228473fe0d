"""Faults while writing: a full disk, two writers on one folder, the user's umask."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segformer import create_model
from segformer.cli import main
from segformer.fileio import atomic_write, atomic_write_json

SCALE = ["--scale", "64", "32"]


def disk_full_after_half(data: bytes):
    """A writer that writes half of ``data`` to the file, then fails as a full disk does."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_disk_full_keeps_the_previous_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"mIoU": 0.5})
    before = target.read_bytes()
    with pytest.raises(OSError) as caught:
        atomic_write(target, disk_full_after_half(b"x" * 1000))
    assert caught.value.errno == errno.ENOSPC
    assert str(target) in str(caught.value) and "previous results.json is intact" in str(caught.value)
    assert target.read_bytes() == before and leftovers(tmp_path) == []

    with pytest.raises(OSError, match="no new.json was written"):
        atomic_write(tmp_path / "new.json", disk_full_after_half(b"x" * 1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_get_the_users_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {})
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40 + i, 56, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_disk_full_during_predict_is_one_line_and_keeps_the_previous_label_map(
    images, weights, tmp_path, monkeypatch, capsys
):
    argv = ["predict", str(images / "0.png"), "--weights", str(weights), "--out", str(tmp_path), *SCALE]
    assert main(argv) == 0
    before = (tmp_path / "0_label.png").read_bytes()
    real_save = Image.SAVE["PNG"]

    def full_disk(image, fp, filename, *args, **kwargs):
        real_save(image, fp, filename, *args, **kwargs)
        fp.truncate(fp.tell() // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(Image.SAVE, "PNG", full_disk)
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"segformer predict: error: {tmp_path / '0_label.png'}: cannot write (No space left on device); "
        "the previous 0_label.png is intact"
    ]
    assert (tmp_path / "0_label.png").read_bytes() == before and leftovers(tmp_path) == []


def test_disk_full_while_writing_eval_json(tmp_path, monkeypatch, capsys):
    from segformer.data import write_synthetic

    data = write_synthetic(tmp_path / "data", 0, 1, size=(40, 56), seed=0)
    torch.manual_seed(0)
    create_model("b0", num_classes=6).save_pretrained(tmp_path / "model")
    out = tmp_path / "results.json"
    out.write_text("{}\n")
    monkeypatch.setattr(Path, "write_text", lambda self, text: disk_full_after_half(text.encode())(self))
    argv = ["eval", "--weights", str(tmp_path / "model"), "--dataset", "custom", "--data-root", str(data)]
    capsys.readouterr()
    assert main(argv + ["--scale", "56", "40", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "intact" in err[0]
    assert out.read_bytes() == b"{}\n" and leftovers(tmp_path) == []


def test_outputs_are_never_written_under_their_final_name(images, weights, tmp_path, monkeypatch):
    opened = []
    real_open = Image.Image.save

    def record(self, fp, format=None, **params):
        opened.append(Path(fp).name)
        return real_open(self, fp, format, **params)

    monkeypatch.setattr(Image.Image, "save", record)
    assert main(["predict", str(images), "--weights", str(weights), "--out", str(tmp_path), *SCALE, "--quiet"]) == 0
    finals = {p.name for p in tmp_path.iterdir()}
    assert len(opened) == 12 and not finals & set(opened)
    assert all(name.startswith(".") and name.endswith(".tmp") for name in opened)


def test_two_predict_processes_on_one_folder(images, weights, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "segformer", "predict", str(images), "--weights", str(weights), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd + SCALE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    assert leftovers(out) == []
    single = tmp_path / "single"
    assert main(["predict", str(images), "--weights", str(weights), "--out", str(single), *SCALE, "--quiet"]) == 0
    for path in sorted(single.iterdir()):
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name
        if path.suffix == ".png":
            with Image.open(out / path.name) as picture:
                picture.load()  # decodes fully: no half-written file under a final name
    assert len(json.loads("[" + ",".join((out / "manifest.jsonl").read_text().splitlines()) + "]")) == 6


def test_disk_full_during_export_keeps_the_previous_file(weights, tmp_path, monkeypatch, capsys):
    target = tmp_path / "model.pt2"
    target.write_bytes(b"previous export")
    monkeypatch.setattr("segformer.export.export_program", lambda model, height, width: "a program")
    monkeypatch.setattr(torch.export, "save", lambda program, tmp: disk_full_after_half(b"x" * 4096)(tmp))
    assert main(["export", str(target), "--weights", str(weights), "--format", "pt2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0] and "No space left on device" in err[0] and "intact" in err[0]
    assert target.read_bytes() == b"previous export" and leftovers(tmp_path) == []
