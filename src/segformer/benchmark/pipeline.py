"""Images/s of the training input pipeline alone (``segformer benchmark --data``)."""

from __future__ import annotations

import time

from segformer.recipe import Recipe
from segformer.training.data import build_split, build_train_loader, recipe_transforms


def data_images_per_s(recipe: Recipe, workers: int, repeats: int = 10, warmup: int = 2) -> float:
    """Images/s of the training input pipeline: ``recipe``'s dataset and augmentation through the train loader.

    ``warmup`` batches (worker start-up) are not timed; then ``repeats`` batches of ``data.batch_size``.
    """
    data = recipe.data
    loader = build_train_loader(
        build_split(data, "train"), recipe_transforms(data), data.batch_size, seed=recipe.seed, workers=workers
    )
    batches = iter(loader)
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(repeats):
        next(batches)
    seconds = time.perf_counter() - start
    del batches  # stops the workers
    return repeats * data.batch_size / seconds
