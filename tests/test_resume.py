"""Nothing is lost: exact resume, atomic checkpoints, NaN stops, data order independent of workers."""

import json

import numpy as np
import pytest
import torch

import reference
import segformer.train as trainer
import segformer.training.losses as training_losses
from segformer.data.synthetic import write_synthetic
from segformer.fileio import CheckpointError
from segformer.training.checkpoint import load_checkpoint
from segformer.training.data import TrainSampler, build_train_loader
from segformer.transforms import train_transforms

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synthetic"), num_train=12, num_val=2, size=(64, 64), seed=0)


def tiny_recipe(root, **values):
    """The tiny recipe with photometric distortion, drop path and dropout on (everything random)."""
    randomness = {"model.drop_path_rate": 0.1, "model.decoder_dropout": 0.1, "data.photometric": "true"}
    return reference.tiny_recipe(root, {**randomness, **values})


class Killed(Exception):
    pass


def kill_at_call(monkeypatch, name: str, call: int, replacement=None, module=trainer):
    """Make ``module.<name>`` raise Killed (or return ``replacement(...)``) on its ``call``-th call."""
    original = getattr(module, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            if replacement is None:
                raise Killed(f"killed at call {call}")
            return replacement(*args, **kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def test_resume_continues_bitwise(data_root, tmp_path, monkeypatch):
    recipe = tiny_recipe(data_root)
    trainer.train(recipe, tmp_path / "straight", device="cpu")

    with monkeypatch.context() as patch:
        kill_at_call(patch, "train_step", 3)  # dies during iteration 3, after the checkpoint of iteration 2
        with pytest.raises(Killed):
            trainer.train(recipe, tmp_path / "resumed", device="cpu")
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["iteration"] == 2
    trainer.train(recipe, tmp_path / "resumed", resume=True, device="cpu")

    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert resumed["iteration"] == straight["iteration"] == 4
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for index, state in straight["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], resumed["optimizer"]["state"][index]["exp_avg_sq"])
    records = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == [1, 2, 3, 4]  # the killed run's iteration 3 is not kept
    straight_records = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in straight_records if "loss" in line] == [
        r["loss"] for r in records if "loss" in r
    ]


def test_a_failed_checkpoint_write_keeps_the_previous_one(data_root, tmp_path, monkeypatch):
    recipe = tiny_recipe(data_root)
    original_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second last.pt write (iteration 4): write half a file, then die
            original_save(obj, path, *args, **kwargs)
            with open(path, "r+b") as f:
                f.truncate(f.seek(0, 2) // 2)
            raise Killed("killed while writing")
        return original_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Killed):
        trainer.train(recipe, tmp_path / "run", device="cpu")
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["iteration"] == 2
    assert not list((tmp_path / "run").glob(".last.pt.*"))  # the half-written temporary file is removed


def test_nan_loss_stops_naming_the_iteration(data_root, tmp_path, monkeypatch):
    recipe = tiny_recipe(data_root)

    def nan_loss(logits, *args, **kwargs):
        return logits.sum() * float("nan")

    kill_at_call(monkeypatch, "cross_entropy", 3, replacement=nan_loss, module=training_losses)  # the recipe's term
    with pytest.raises(FloatingPointError, match=r"loss is nan at iteration 3.*last good checkpoint"):
        trainer.train(recipe, tmp_path / "run", device="cpu")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 2


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(data_root, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        trainer.train(tiny_recipe(data_root), tmp_path / "empty", resume=True, device="cpu")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "last.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="already holds a run"):
        trainer.train(tiny_recipe(data_root), tmp_path / "done", device="cpu")


def test_sampler_order_is_a_seeded_permutation_per_epoch_split_across_ranks():
    one = iter(TrainSampler(10, 4, seed=3))
    single = [next(one) for _ in range(5)]  # 20 positions: two epochs
    positions = [p for batch in single for _, p in batch]
    assert positions == list(range(20))
    indices = [i for batch in single for i, _ in batch]
    assert sorted(indices[:10]) == list(range(10)) and sorted(indices[10:]) == list(range(10))
    assert indices[:10] != indices[10:]
    ranks = [iter(TrainSampler(10, 2, seed=3, rank=r, world_size=2)) for r in range(2)]
    for batch in single:  # two ranks with batch 2 see exactly the single process's batch of 4
        assert next(ranks[0]) + next(ranks[1]) == batch
    resumed = iter(TrainSampler(10, 4, seed=3, start=3))
    assert next(resumed) == single[3]


def test_batches_do_not_depend_on_the_number_of_workers(data_root):
    from segformer.data import build_dataset

    dataset = build_dataset("custom", data_root, "train")
    transform = train_transforms((48, 48), (64, 64), (0.5, 2.0))
    loaders = [build_train_loader(dataset, transform, 3, seed=1, workers=w, start=2) for w in (0, 2)]
    iterators = [iter(loader) for loader in loaders]
    for _ in range(3):
        (a_images, a_masks), (b_images, b_masks) = (next(it) for it in iterators)
        assert torch.equal(a_images, b_images) and torch.equal(a_masks, b_masks)
    assert np.isfinite(a_images.numpy()).all()
