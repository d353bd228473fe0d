"""Training data order and augmentation that are reproducible, resumable and independent of workers.

The training stream is an endless sequence of positions 0, 1, 2, …; epoch e visits the dataset in
a permutation seeded by (seed, e). Global micro-batch k holds positions [k·B·W, (k+1)·B·W) for B
images per process and W processes; rank r takes its r-th slice of B. Each sample is augmented
with a generator seeded by (seed, position), so a sample's augmentation depends neither on the
number of workers nor on the process that loads it, and resuming needs only the number of
micro-batches already consumed. One process with batch 2B sees exactly the images and
augmentations of two processes with batch B.

The recipe's side: ``build_datasets`` and ``check_data`` (both splits, every problem named before the first
iteration), ``recipe_transforms`` (the ``[data]`` augmentation) and ``train_batches`` (this rank's stream).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from segformer.data import SegmentationDataset, build_dataset, canonical_name
from segformer.data.check import MAX_LISTED, check_dataset
from segformer.distributed import Distributed
from segformer.recipe import DataRecipe, Recipe
from segformer.transforms import train_transforms

_ORDER, _AUGMENT = 0, 1  # separate seed streams for the visiting order and the augmentation


class TrainSampler:
    """Endless batch sampler yielding lists of ``(dataset index, stream position)`` keys.

    Args:
        num_samples: dataset length.
        batch_size: images per process per micro-batch.
        seed: seed of the visiting order.
        rank: this process's rank.
        world_size: number of processes.
        start: micro-batches already consumed (to resume).
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0
    ) -> None:
        if num_samples < 1:
            raise ValueError("the training set is empty")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def index(self, position: int) -> int:
        """Dataset index visited at stream ``position``."""
        epoch, offset = divmod(position, self.num_samples)
        if epoch != self._epoch:
            rng = np.random.default_rng((self.seed, _ORDER, epoch))
            self._epoch, self._order = epoch, rng.permutation(self.num_samples)
        return int(self._order[offset])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start
        while True:
            first = (step * self.world_size + self.rank) * self.batch_size
            yield [(self.index(p), p) for p in range(first, first + self.batch_size)]
            step += 1


class AugmentedDataset(Dataset):
    """``dataset[i]`` (untransformed image, mask) passed through ``transform(image, mask, rng)``.

    Indexed by ``(index, position)`` keys from ``TrainSampler``; ``rng`` is seeded by (seed, position).
    """

    def __init__(self, dataset: Dataset, transform: Callable, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, position = key
        image, mask = self.dataset[index]
        return self.transform(image, mask, np.random.default_rng((self.seed, _AUGMENT, position)))


class TimedBatches:
    """An iterator of batches that adds up the seconds spent blocked in ``next`` (waiting for data).

    ``take_share(elapsed)`` returns the share of ``elapsed`` seconds spent waiting since the last call and
    starts a new interval: the training loop's "data wait".
    """

    def __init__(self, batches: Iterator) -> None:
        self.batches = batches
        self.waited = 0.0

    def __iter__(self) -> TimedBatches:
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self.batches)
        finally:
            self.waited += time.perf_counter() - start

    def take_share(self, elapsed: float) -> float:
        """Waiting seconds / ``elapsed`` since the previous call (0 for an empty interval); resets the sum."""
        waited, self.waited = self.waited, 0.0
        return min(waited / elapsed, 1.0) if elapsed > 0 else 0.0


def ignore_interrupts(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which finishes its iteration, saves and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_train_loader(
    dataset: Dataset,
    transform: Callable,
    batch_size: int,
    *,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    start: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Endless loader of (images, masks) micro-batches for this rank, resumed after ``start`` micro-batches.

    ``dataset`` must return untransformed (image, mask) pairs; ``transform`` augments them.
    """
    return DataLoader(
        AugmentedDataset(dataset, transform, seed),
        batch_sampler=TrainSampler(len(dataset), batch_size, seed, rank, world_size, start),
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=ignore_interrupts,
        # the loader draws its workers' base seed from this generator, not from the global torch RNG
        generator=torch.Generator().manual_seed(seed),
    )


def build_split(data: DataRecipe, split: str) -> SegmentationDataset:
    """The ``split`` ("train", "val") of the dataset ``data`` names, untransformed."""
    if not data.root:
        raise ValueError("data.root is empty: pass --data-root DIR (or --set data.root=DIR)")
    return build_dataset(canonical_name(data.dataset), data.root, split, **data.options)


def build_datasets(data: DataRecipe) -> tuple[SegmentationDataset, SegmentationDataset]:
    """(train, val) datasets of ``data`` (a recipe's ``[data]``), untransformed."""
    return build_split(data, "train"), build_split(data, "val")


def check_data(splits: dict[str, SegmentationDataset], data: DataRecipe, progress: bool) -> None:
    """Refuse a broken dataset before the first iteration, naming the bad files of every split (``data.check``).

    Raises:
        ValueError: every problem ``segformer.data.check.check_dataset`` found in the splits (the first
            ``MAX_LISTED`` of each listed), one line each with its file.
    """
    if not data.check:
        return
    lines, found = [], {}
    for split, dataset in splits.items():
        report = check_dataset(dataset, progress=progress, fast=True)
        found[split] = len(report.problems)
        lines += [f"  {report.name} {split}: {problem}" for problem in report.problems[:MAX_LISTED]]
        if len(report.problems) > MAX_LISTED:
            lines.append(f"  … and {len(report.problems) - MAX_LISTED} more in {split}")
    if sum(found.values()):
        counts = ", ".join(f"{split} {count}" for split, count in found.items())
        raise ValueError(
            f"the dataset at {data.root} has {sum(found.values())} problem(s) ({counts}); fix them (segformer "
            "check-data lists them with a class table) or skip this check with --no-check-data:\n" + "\n".join(lines)
        )


def data_workers(requested: int) -> tuple[int, str]:
    """``data.workers`` capped at the CPU cores this process may use, and how to say so."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if requested <= cores:
        return requested, f"{requested} data workers"
    return cores, f"{cores} data workers (data.workers = {requested}, capped at the {cores} CPU cores here)"


def recipe_transforms(data: DataRecipe) -> Callable:
    """The training augmentation of ``data`` (``segformer.transforms.train_transforms``)."""
    return train_transforms(
        data.crop, data.scale, data.ratio_range, data.cat_max_ratio, data.flip_prob, data.photometric
    )


def train_batches(
    recipe: Recipe, dist_info: Distributed, train_set: SegmentationDataset, start: int
) -> tuple[TimedBatches, str]:
    """The endless augmented micro-batches of this rank from micro-batch ``start``, and the workers' description."""
    data = recipe.data
    workers, description = data_workers(data.workers)
    loader = build_train_loader(
        train_set,
        recipe_transforms(data),
        data.batch_size,
        seed=recipe.seed,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        start=start,
        workers=workers,
        pin_memory=dist_info.device.type == "cuda",
    )
    return TimedBatches(iter(loader)), description
