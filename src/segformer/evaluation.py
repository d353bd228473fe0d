"""Evaluation of a ``Segmenter`` on a dataset: mmseg's whole-set confusion-matrix metrics, on one or many ranks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from segformer.constants import IGNORE_INDEX
from segformer.inference import Segmenter
from segformer.metrics import ConfusionMatrix
from segformer.progress import progress_bar


def evaluate(
    segmenter: Segmenter,
    dataset: Dataset,
    *,
    progress: bool = True,
    on_prediction: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> dict:
    """Predict every image of ``dataset`` and score the predictions against its masks.

    Under ``torch.distributed`` each rank predicts the images rank, rank + world_size, … and the
    counts are summed over ranks before the metrics are computed, so every rank returns the same result.

    Args:
        segmenter: the model and its test protocol.
        dataset: yields (H×W×3 uint8 RGB image, H×W uint8 mask with 255 = ignore).
        progress: show a progress bar (on rank 0 only).
        on_prediction: called as ``on_prediction(index, image, mask, prediction)`` for every image this rank
            predicts (e.g. to draw overlays).

    Returns:
        ``ConfusionMatrix.compute()``: per-class "IoU", "Acc", … arrays and "mIoU", "mAcc", "aAcc", … fractions.
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    num_classes = getattr(dataset, "num_classes", segmenter.num_classes)
    if num_classes != segmenter.num_classes:
        raise ValueError(f"the model predicts {segmenter.num_classes} classes but the dataset has {num_classes}")
    matrix = ConfusionMatrix(segmenter.num_classes, getattr(dataset, "ignore_index", IGNORE_INDEX), segmenter.device)
    indices = range(rank, len(dataset), world)
    for index in progress_bar(indices, desc="evaluate", unit="image", disable=not progress or rank != 0):
        image, mask = dataset[index]
        prediction = segmenter.predict(image)
        if on_prediction is not None:
            on_prediction(index, image, mask, prediction)
        matrix.update(torch.from_numpy(prediction).to(segmenter.device), torch.from_numpy(mask))
    matrix.reduce()
    return matrix.compute()
