"""Semantic segmentation metrics with mmsegmentation 1.x ``IoUMetric`` semantics.

Counts are accumulated over the whole evaluation set in a ``K × K`` confusion matrix (rows: label, columns:
prediction; pixels whose label is the ignore index are skipped), then per class, with I the intersection
(diagonal), L the labelled and P the predicted pixel counts and U = P + L - I:

- IoU = I / U, Acc = Recall = I / L, Precision = I / P, Dice = 2I / (P + L),
  Fscore = 2 · Precision · Recall / (Precision + Recall);
- every 0 / 0 is NaN, exactly as mmseg computes it: a class absent from the labels and never predicted has
  IoU, Acc and Dice NaN; a class predicted but absent from the labels has IoU = Dice = Precision = 0 and
  Acc = Recall = NaN; a class with I = 0 has Fscore NaN (mmseg's 0·0 / (0+0));
- mIoU, mAcc, mDice, mFscore, mPrecision, mRecall are NaN-skipping means over classes; aAcc = ΣI / ΣL.
- fwIoU (not in mmseg) = Σ_c (L_c / ΣL) · IoU_c over the classes present in the labels.

All scalars are fractions (mmseg prints percent). mmseg sums float32 histograms; here counts are int64, so
the results agree to float rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from segformer.constants import IGNORE_INDEX

PER_CLASS = ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall")


def _nanmean(values: np.ndarray) -> float:
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else math.nan


class ConfusionMatrix:
    """Accumulates a confusion matrix over predictions and labels, on any device and across ranks.

    Args:
        num_classes: number of classes K.
        ignore_index: label value that is skipped.
        device: where the matrix lives; by default the device of the first ``update``.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.device = None if device is None else torch.device(device)
        self.matrix: torch.Tensor | None = None
        self._reduced = False

    def reset(self) -> None:
        """Forget all counts."""
        self.matrix = None
        self._reduced = False

    def _zeros(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=self.device or device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add the pixels of one prediction (or a batch) to the counts.

        Args:
            pred: integer class ids.
            target: integer labels of the same shape; ``ignore_index`` pixels are skipped.

        Raises:
            ValueError: different shapes, or a prediction / non-ignored label outside ``0..K-1``.
        """
        if self._reduced:
            raise RuntimeError("update() after reduce(): call reset() to start a new evaluation")
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError(f"expected integer class ids, got {pred.dtype} predictions and {target.dtype} labels")
        k = self.num_classes
        target = target.to(pred.device, torch.int64)
        pred = pred.to(torch.int64)
        keep = target != self.ignore_index
        if ((keep & ((target < 0) | (target >= k))) | (keep & ((pred < 0) | (pred >= k)))).any():
            raise ValueError(
                f"class ids outside 0..{k - 1}: predictions {pred[keep].unique().tolist()[:20]}, "
                f"labels {target[keep].unique().tolist()[:20]} (ignore index {self.ignore_index})"
            )
        # Ignored pixels go to an extra bin that is dropped, avoiding a data-dependent boolean gather.
        index = torch.where(keep, target * k + pred, k * k)
        counts = torch.bincount(index.flatten(), minlength=k * k + 1)[: k * k].view(k, k)
        if self.matrix is None:
            self.matrix = self._zeros(counts.device)
        self.matrix += counts.to(self.matrix.device)

    def reduce(self) -> None:
        """Sum the counts over all ranks (``all_reduce``) when ``torch.distributed`` is initialised; call once.

        Every rank must call it, also a rank that saw no data. Without a process group it does nothing.
        """
        if self._reduced:
            raise RuntimeError("reduce() called twice: the counts are already summed over ranks")
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.matrix is None:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            self.matrix = self._zeros(torch.device(device))
        dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        self._reduced = True

    def compute(self) -> dict:
        """The metrics of the counts so far (see the module docstring for the exact definitions).

        Returns:
            Per-class float64 arrays "IoU", "Acc", "Dice", "Fscore", "Precision", "Recall"; scalars "mIoU",
            "mAcc", "mDice", "mFscore", "mPrecision", "mRecall", "aAcc", "fwIoU"; and "confusion" (the K × K
            int64 matrix, rows = label, columns = prediction).
        """
        k = self.num_classes
        matrix = np.zeros((k, k), dtype=np.int64) if self.matrix is None else self.matrix.cpu().numpy()
        intersect = np.diag(matrix).astype(np.float64)
        label = matrix.sum(axis=1).astype(np.float64)
        predicted = matrix.sum(axis=0).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = intersect / predicted
            recall = intersect / label
            results = {
                "IoU": intersect / (predicted + label - intersect),
                "Acc": recall,
                "Dice": 2 * intersect / (predicted + label),
                "Fscore": 2 * precision * recall / (precision + recall),
                "Precision": precision,
                "Recall": recall.copy(),
            }
            total = label.sum()
            all_acc = intersect.sum() / total if total else math.nan
            fw_iou = float(np.nansum(label / total * results["IoU"])) if total else math.nan
        summary = {"m" + name: _nanmean(results[name]) for name in PER_CLASS}
        return {**results, **summary, "aAcc": float(all_acc), "fwIoU": fw_iou, "confusion": matrix}


def format_table(results: dict, class_names: list[str] | tuple[str, ...]) -> str:
    """A per-class table (IoU, Acc in percent) and a summary line ``aAcc … mIoU … mAcc …``.

    Args:
        results: the output of ``ConfusionMatrix.compute``.
        class_names: one name per class.
    """
    if len(class_names) != len(results["IoU"]):
        raise ValueError(f"{len(class_names)} class names for {len(results['IoU'])} classes")
    width = max(5, *(len(name) for name in class_names))
    lines = [f"{'Class':<{width}}  {'IoU':>7}  {'Acc':>7}", "-" * (width + 18)]
    for name, iou, acc in zip(class_names, results["IoU"], results["Acc"], strict=True):
        lines.append(f"{name:<{width}}  {iou * 100:>7.2f}  {acc * 100:>7.2f}")
    lines.append("-" * (width + 18))
    lines.append(
        f"aAcc {results['aAcc'] * 100:.2f}  mIoU {results['mIoU'] * 100:.2f}  mAcc {results['mAcc'] * 100:.2f}"
    )
    return "\n".join(lines)
