"""A training run never loses work and says what happened: Ctrl-C, a full disk, a corrupt checkpoint, bad data."""

import errno
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import segformer.train as trainer
from reference import tiny_recipe
from segformer.cli import main
from segformer.data.synthetic import write_synthetic
from segformer.recipe import dump_recipe
from segformer.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
ITERS = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    """Synthetic data, the recipe as a file, and the run of that recipe without interruption."""
    folder = tmp_path_factory.mktemp("faults")
    root = write_synthetic(folder / "data", num_train=12, num_val=2, size=(64, 64), seed=0)
    recipe = tiny_recipe(
        root,
        {"schedule.iters": ITERS, "optim.warmup_iters": 2, "data.photometric": "true", "model.drop_path_rate": 0.1},
    )
    recipe_file = folder / "tiny.toml"
    recipe_file.write_text(dump_recipe(recipe))
    trainer.train(recipe, folder / "straight", device="cpu", quiet=True)
    return root, recipe_file, folder / "straight"


def assert_same_run(run, straight) -> None:
    """The two runs ended in bit-identical weights and optimiser states, after the same logged losses."""
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(straight / "last.pt")
    assert a["iteration"] == b["iteration"] == ITERS
    for key, value in b["model"].items():
        assert torch.equal(value, a["model"][key]), key
    for index, state in b["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], a["optimizer"]["state"][index]["exp_avg_sq"])
    losses = [re.findall(r'"loss": ([0-9.e-]+)', (r / "metrics.jsonl").read_text()) for r in (run, straight)]
    assert losses[0] == losses[1] and len(losses[0]) == ITERS


def resume_command(message: str) -> list[str]:
    """The arguments of the ``segformer train --resume …`` command quoted in ``message``."""
    found = re.search(r"segformer (train --resume[^\n;]*)", message)
    assert found, message
    return shlex.split(found.group(1).strip().rstrip("."))


def test_ctrl_c_saves_the_finished_iteration_and_resume_matches_an_uninterrupted_run(setup, tmp_path, capsys):
    _, recipe_file, straight = setup
    run = tmp_path / "run"
    original, calls = trainer.train_step, {"n": 0}

    def step_then_ctrl_c(*args, **kwargs):  # Ctrl-C arrives while iteration 3 computes
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    trainer.train_step = step_then_ctrl_c
    try:
        code = main(["train", str(recipe_file), "--out", str(run), "--device", "cpu", "--quiet"])
    finally:
        trainer.train_step = original
    err = capsys.readouterr().err
    assert code == 130
    assert f"the last checkpoint is {run / 'last.pt'} (iteration 3)" in err
    assert "Traceback" not in err and not re.search(r"^train: \d", err, re.M)  # --quiet: no progress lines
    assert load_checkpoint(run / "last.pt")["iteration"] == 3
    assert load_checkpoint(run / "last.prev.pt")["iteration"] == 2  # one generation kept back
    assert (run / "last" / "model.safetensors").is_file()

    assert resume_command(err) == ["train", "--resume", str(run)]
    assert main([*resume_command(err), "--device", "cpu", "--quiet"]) == 0
    assert_same_run(run, straight)


def test_sigint_to_a_real_training_process(setup, tmp_path):
    _, recipe_file, straight = setup
    run = tmp_path / "run"
    command = [sys.executable, "-c", "import sys; from segformer.cli import main; sys.exit(main())"]
    args = ["train", str(recipe_file), "--out", str(run), "--device", "cpu", "--threads", "1"]
    process = subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = process.stdout.readline()  # printed once Ctrl-C is handled, just before the first iteration
    assert start.startswith("training SegFormer-B0"), start + process.stderr.read()
    deadline = time.monotonic() + 120
    while not (run / "last.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # Ctrl-C once iteration 2 is saved, while iterations 3 … 6 run
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "\r" not in err  # plain progress lines: stderr is not a terminal
    stopped = load_checkpoint(run / "last.pt")["iteration"]
    assert 2 <= stopped < ITERS
    assert f"(iteration {stopped}); continue with: segformer train --resume {run}" in err
    assert main([*resume_command(err), "--device", "cpu", "--quiet"]) == 0
    assert_same_run(run, straight)


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(setup, tmp_path, monkeypatch, capsys):
    _, recipe_file, _ = setup
    run = tmp_path / "run"
    original, writes = torch.save, {"n": 0}

    def disk_full_on_second_last(obj, path, *args, **kwargs):
        if not os.path.basename(path).startswith(".last.pt."):
            return original(obj, path, *args, **kwargs)
        writes["n"] += 1
        if writes["n"] < 2:
            return original(obj, path, *args, **kwargs)
        original(obj, path, *args, **kwargs)
        with open(path, "r+b") as f:  # half the file reached the disk
            f.truncate(f.seek(0, 2) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full_on_second_last)
    assert main(["train", str(recipe_file), "--out", str(run), "--device", "cpu", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert str(run / "last.pt") in err and "No space left on device" in err and "the previous last.pt is intact" in err
    assert f"segformer train --resume {run}" in err and "Traceback" not in err
    assert load_checkpoint(run / "last.pt")["iteration"] == 2
    assert not list(run.glob(".last.pt.*"))  # the half-written temporary file is removed


def test_a_corrupt_last_checkpoint_offers_the_previous_one(setup, tmp_path, capsys):
    _, _, straight = setup
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    last = run / "last.pt"
    corrupt = last.read_bytes()[: last.stat().st_size // 2]
    last.write_bytes(corrupt)
    assert main(["train", "--resume", str(run), "--device", "cpu", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{last}: corrupt or truncated checkpoint" in err
    assert f"the previous checkpoint {run / 'last.prev.pt'} (iteration {ITERS - 2}) is intact" in err
    assert resume_command(err) == ["train", "--resume", str(run), "--from-checkpoint", "last.prev.pt"]
    assert main([*resume_command(err), "--device", "cpu", "--quiet"]) == 0
    assert (run / "last.discarded.pt").read_bytes() == corrupt  # kept aside, never rotated into last.prev.pt
    assert_same_run(run, straight)


def test_workers_capped_at_the_cores_and_one_warm_up_warning(setup, tmp_path, capsys):
    root, _, _ = setup
    cores = len(os.sched_getaffinity(0))
    recipe = tiny_recipe(root, {"schedule.iters": 1, "data.workers": cores + 3, "optim.warmup_iters": 30})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(recipe, tmp_path / "run", device="cpu", quiet=True)
    messages = [str(w.message) for w in caught]
    assert [m for m in messages if "warmup_iters" in m] == [
        "optim.warmup_iters = 30 is longer than the whole run (schedule.iters = 1): the learning rate never reaches "
        "optim.lr"
    ]
    assert not [m for m in messages if "worker" in m]  # the DataLoader's too-many-workers warning
    out = capsys.readouterr().out
    assert f"{cores} data workers (data.workers = {cores + 3}, capped at the {cores} CPU cores here)" in out


def test_a_broken_val_mask_is_refused_before_the_first_iteration(tmp_path, capsys):
    root = write_synthetic(tmp_path / "data", num_train=4, num_val=2, size=(64, 64), seed=0)
    broken = root / "masks" / "val" / "00001.png"
    broken.write_bytes(b"not a png")
    recipe_file = tmp_path / "tiny.toml"
    recipe_file.write_text(dump_recipe(tiny_recipe(root)))
    calls = {"n": 0}
    original = trainer.train_step

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    trainer.train_step = counting
    try:
        assert main(["train", str(recipe_file), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"]) == 1
    finally:
        trainer.train_step = original
    assert str(broken) in capsys.readouterr().err
    assert calls["n"] == 0 and not (tmp_path / "run" / "last.pt").exists()


def write_pairs(root, split: str, masks: dict[str, np.ndarray]) -> None:
    """``root/images/<split>/<name>.png`` (32×32 grey) and ``root/masks/<split>/<name>.png`` for each mask."""
    for kind in ("images", "masks"):
        (root / kind / split).mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(root / "images" / split / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / split / f"{name}.png")


def test_every_data_problem_of_both_splits_is_named_before_the_first_iteration(tmp_path, capsys):
    root = tmp_path / "data"
    good = np.tile(np.arange(3, dtype=np.uint8), (32, 11))[:, :32]  # classes 0, 1, 2
    bad_labels = good.copy()
    bad_labels[5, 5] = 7  # not a class id (3 classes) nor the ignore value
    write_pairs(root, "train", {"a": good, "b": bad_labels, "c": good})
    write_pairs(root, "val", {"d": good, "e": good[:16]})  # a 32×16 mask for a 32×32 image
    (root / "classes.txt").write_text("zero\none\ntwo\n")
    recipe_file = tmp_path / "tiny.toml"
    recipe_file.write_text(dump_recipe(tiny_recipe(root, {"data.crop": "[32, 32]", "data.scale": "[32, 32]"})))
    calls, original = {"n": 0}, trainer.train_step

    def counting(**kwargs):
        calls["n"] += 1
        return original(**kwargs)

    trainer.train_step = counting
    try:
        assert main(["train", str(recipe_file), "--out", str(tmp_path / "run"), "--device", "cpu", "-q"]) == 1
    finally:
        trainer.train_step = original
    err = capsys.readouterr().err
    assert "2 problem(s) (train 1, val 1)" in err
    assert f"{root / 'masks' / 'train' / 'b.png'}: label values [7] are not class ids 0..2" in err
    assert f"{root / 'masks' / 'val' / 'e.png'}: mask is 32×16 but its image" in err
    assert calls["n"] == 0 and not (tmp_path / "run").exists()
