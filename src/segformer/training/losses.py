"""Training losses as mmsegmentation offers them, chosen by the recipe's ``[loss]`` section.

``build_loss(recipe.loss, num_classes, device)`` gives a ``SegmentationLoss``: called with the decoder's logits
(B × K × h × w, any dtype) and the masks (B × H × W int64, 255 = ignore) it resizes the logits once, in float32,
bilinearly (``align_corners=False``) to the mask size, as mmseg's ``BaseDecodeHead.loss_by_feat``, then sums
``weight × term`` over the recipe's terms, as mmseg sums its list of ``loss_decode``. The terms:

- ``cross_entropy``: mmseg's ``CrossEntropyLoss`` (``mmseg/models/losses/cross_entropy_loss.py``). With
  ``avg_non_ignore = false`` the (class-weighted) per-pixel losses are averaged over all pixels, ignored ones
  counting as 0: mmseg 0.x, which the official SegFormer code runs. With ``avg_non_ignore = true`` the sum is
  divided by the class weights summed over the labelled pixels (their count when unweighted): mmseg 1.x
  (v1.2.2), which is PyTorch's weighted mean; mmseg 0.x divided by the count even with class weights.
  (mmseg 1.x with class weights and ``avg_non_ignore=False`` indexes the weights with the label 255 and
  fails on any ignored pixel, open-mmlab/mmsegmentation#3734, so there is no 1.x value to match there.)
- ``focal``: mmseg 1.x's ``FocalLoss`` (``focal_loss.py``, ``py_sigmoid_focal_loss``; it supports only
  ``use_sigmoid=True``): per pixel and class, binary cross-entropy of the sigmoid against the one-hot target
  × (α t + (1 − α)(1 − t)) × (1 − p_t)^γ (Lin et al., ICCV 2017), × class weight, averaged over all
  B·H·W·K elements with ignored pixels as 0.
- ``dice``: mmseg 1.x (v1.2.2) ``DiceLoss`` (``dice_loss.py``) with ``use_sigmoid=False`` (softmax) and
  ``eps=1e-3``: per image, over every class and pixel at once, 1 − 2Σpt / (Σp² + ε + Σt² + ε) (V-Net,
  Milletari et al. 2016), or 1 − (2Σpt + ε) / (Σp + Σt + ε) with ``dice_naive``; mean over the batch. One
  departure: ignored pixels are left out entirely; mmseg 1.2.2 zeroes their targets but keeps their
  probabilities in Σp (its ``ignore_index`` drops the class channel 255), which would make the loss depend
  on the crop padding. mmseg's DiceLoss has no class weights.
- ``lovasz``: the Lovász-softmax loss (Berman et al., CVPR 2018, Alg. 1 and Eq. 12) as mmseg's
  ``LovaszLoss(loss_type="multi_class", classes="present", per_image=False)`` (``lovasz_loss.py``): over the
  labelled pixels of the whole batch, for each class present in the labels, the errors |1[y = c] − p_c|
  sorted in decreasing order dotted with the gradient of the Lovász extension of the Jaccard loss;
  × class weight; mean over the present classes.

OHEM (``ohem = true``) is mmseg's ``OHEMPixelSampler`` (``mmseg/structures/sampler/ohem_pixel_sampler.py``) on
the resized logits: its 0/1 pixel weights multiply the pixel-wise terms (cross_entropy, focal) before their
mean, as mmseg's ``seg_weight``; dice and lovasz see every labelled pixel (mmseg's LovaszLoss ignores
``seg_weight``; its DiceLoss rejects it).

``class_weights = "auto"`` is resolved before training by ``resolve_class_weights`` (median-frequency
balancing of the training split, ``auto_class_weights``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from segformer.constants import IGNORE_INDEX
from segformer.progress import progress_bar
from segformer.recipe import LossRecipe

AVG_EPS = float(torch.finfo(torch.float32).eps)  # mmseg's weight_reduce_loss: sum / (avg_factor + eps)
DICE_EPS = 1e-3  # mmseg 1.x DiceLoss default


def resize_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``logits`` in float32, resized bilinearly (``align_corners=False``) to ``size`` (the masks' H × W)."""
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)


def _labelled(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B × H × W bool of the labelled pixels, the masks with 0 in place of 255 so they can index classes)."""
    valid = masks != IGNORE_INDEX
    return valid, torch.where(valid, masks, torch.zeros_like(masks))


def pixel_cross_entropy(logits: torch.Tensor, masks: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """B × H × W cross-entropy of each pixel × the class weight of its label; 0 at ignored pixels."""
    return F.cross_entropy(logits, masks, weight=class_weights, ignore_index=IGNORE_INDEX, reduction="none")


def cross_entropy(
    logits: torch.Tensor,
    masks: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    avg_non_ignore: bool = False,
    pixel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """mmseg's ``CrossEntropyLoss`` on logits already at the mask size (see the module docstring for the mean).

    Args:
        logits: B × K × H × W float32.
        masks: B × H × W int64 class ids, 255 = ignore.
        class_weights: K weights, or None.
        avg_non_ignore: divide by the labelled pixels' class weights (count) instead of all pixels.
        pixel_weights: B × H × W weights (OHEM's 0/1 ``seg_weight``), or None.
    """
    loss = pixel_cross_entropy(logits, masks, class_weights)
    if pixel_weights is not None:
        loss = loss * pixel_weights
    if not avg_non_ignore:
        return loss.mean()
    valid, safe = _labelled(masks)
    labelled = valid.sum() if class_weights is None else (class_weights[safe] * valid).sum()
    return loss.sum() / (labelled + AVG_EPS)


def ohem_pixel_weights(
    logits: torch.Tensor,
    masks: torch.Tensor,
    thresh: float,
    min_kept: int,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """mmseg's ``OHEMPixelSampler.sample``: B × H × W float 1 at the hard labelled pixels, 0 elsewhere.

    With ``thresh > 0``: the labelled pixels whose softmax probability of the true class is below
    max(thresh, the (min_kept·B + 1)-th smallest such probability), or below the largest one when there are
    no more than min_kept·B labelled pixels (mmseg's rule, which then drops only the most confident pixel).
    With ``thresh = 0`` (mmseg's ``thresh=None``): the min_kept·B labelled pixels of highest cross-entropy
    (with the class weights). No gradient flows through the selection.
    """
    with torch.no_grad():
        valid, safe = _labelled(masks)
        batch_kept = min_kept * masks.shape[0]
        weights = torch.zeros(masks.shape, dtype=torch.float32, device=masks.device)
        if thresh > 0:
            prob = logits.softmax(dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)[valid]
            if prob.numel() > 0:
                bound = prob.kthvalue(min(batch_kept, prob.numel() - 1) + 1).values
                weights[valid] = (prob < torch.clamp(bound, min=thresh)).float()
        else:
            losses = pixel_cross_entropy(logits, masks, class_weights)[valid]
            kept = torch.zeros_like(losses)
            kept[losses.topk(min(batch_kept, losses.numel())).indices] = 1.0
            weights[valid] = kept
        return weights


def focal_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    gamma: float = 2.0,
    alpha: float = 0.5,
    class_weights: torch.Tensor | None = None,
    pixel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """mmseg 1.x's sigmoid ``FocalLoss`` on logits at the mask size, mean over B·H·W·K (ignored pixels as 0)."""
    valid, safe = _labelled(masks)
    target = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    prob = logits.sigmoid()
    one_minus_pt = (1 - prob) * target + prob * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * one_minus_pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * focal_weight
    element_weights = valid.unsqueeze(1).to(logits.dtype)
    if pixel_weights is not None:
        element_weights = element_weights * pixel_weights.unsqueeze(1)
    if class_weights is not None:
        element_weights = element_weights * class_weights.view(1, -1, 1, 1)
    return (loss * element_weights).mean()


def dice_loss(logits: torch.Tensor, masks: torch.Tensor, naive: bool = False) -> torch.Tensor:
    """mmseg 1.x's softmax ``DiceLoss`` per image over all classes and labelled pixels; mean over the batch."""
    valid, safe = _labelled(masks)
    prob = logits.softmax(dim=1) * valid.unsqueeze(1)
    dims = (1, 2)
    intersection = prob.gather(1, safe.unsqueeze(1)).squeeze(1).mul(valid).sum(dims)  # Σ p·t, t one-hot
    target_sum = valid.sum(dims).to(prob.dtype)  # Σ t = Σ t² over the labelled pixels
    if naive:
        dice = (2 * intersection + DICE_EPS) / (prob.sum((1, 2, 3)) + target_sum + DICE_EPS)
    else:
        dice = 2 * intersection / (prob.pow(2).sum((1, 2, 3)) + DICE_EPS + target_sum + DICE_EPS)
    return (1 - dice).mean()


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at errors sorted decreasingly (Berman et al., Alg. 1)."""
    total = fg_sorted.sum()
    intersection = total - fg_sorted.cumsum(0)
    union = total + (1 - fg_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(
    logits: torch.Tensor, masks: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Lovász-softmax over the labelled pixels of the batch, classes present in the labels (mmseg's LovaszLoss)."""
    valid = masks != IGNORE_INDEX
    prob = logits.softmax(dim=1).permute(0, 2, 3, 1)[valid]  # P × K
    labels = masks[valid]
    if labels.numel() == 0:
        return prob.sum() * 0.0  # only ignored pixels: zero, with a (zero) gradient
    losses = []
    for c in torch.unique(labels).tolist():
        fg = (labels == c).to(prob.dtype)
        errors, order = (fg - prob[:, c]).abs().sort(descending=True)
        loss = torch.dot(errors, lovasz_grad(fg[order]))
        losses.append(loss if class_weights is None else loss * class_weights[c])
    return torch.stack(losses).mean()


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentationLoss:
    """The recipe's loss: ``loss(logits, masks)`` → scalar float32 tensor (see the module docstring)."""

    terms: tuple[str, ...]
    weights: tuple[float, ...]
    class_weights: torch.Tensor | None
    avg_non_ignore: bool
    ohem: bool
    ohem_thresh: float
    ohem_min_kept: int
    focal_gamma: float
    focal_alpha: float
    dice_naive: bool

    def __call__(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return sum(self.term_values(logits, masks).values())

    def term_values(self, logits: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """``weight × term`` of each term, on one shared resize of the logits."""
        logits = resize_logits(logits, masks.shape[-2:])
        pixel_weights = None
        if self.ohem:
            pixel_weights = ohem_pixel_weights(logits, masks, self.ohem_thresh, self.ohem_min_kept, self.class_weights)
        return {
            name: weight * self._term(name, logits, masks, pixel_weights)
            for name, weight in zip(self.terms, self.weights, strict=True)
        }

    def _term(
        self, name: str, logits: torch.Tensor, masks: torch.Tensor, pixel_weights: torch.Tensor | None
    ) -> torch.Tensor:
        if name == "cross_entropy":
            return cross_entropy(logits, masks, self.class_weights, self.avg_non_ignore, pixel_weights)
        if name == "focal":
            return focal_loss(logits, masks, self.focal_gamma, self.focal_alpha, self.class_weights, pixel_weights)
        if name == "dice":
            return dice_loss(logits, masks, self.dice_naive)
        if name == "lovasz":
            return lovasz_softmax(logits, masks, self.class_weights)
        raise ValueError(f"unknown loss term {name!r}")


def build_loss(loss: LossRecipe, num_classes: int, device: torch.device | str = "cpu") -> SegmentationLoss:
    """The ``SegmentationLoss`` of a recipe's ``[loss]`` section, its class weights on ``device``.

    Raises:
        ValueError: ``class_weights`` still "auto" (call ``resolve_class_weights`` first), or not one per class.
    """
    weights = loss.class_weights
    if isinstance(weights, str):
        raise ValueError(f'loss.class_weights = "{weights}" must be resolved to numbers first (resolve_class_weights)')
    if weights and len(weights) != num_classes:
        raise ValueError(f"loss.class_weights has {len(weights)} values for {num_classes} classes")
    return SegmentationLoss(
        terms=tuple(loss.terms),
        weights=tuple(loss.weights),
        class_weights=torch.tensor(weights, dtype=torch.float32, device=device) if weights else None,
        avg_non_ignore=loss.avg_non_ignore,
        ohem=loss.ohem,
        ohem_thresh=loss.ohem_thresh,
        ohem_min_kept=loss.ohem_min_kept,
        focal_gamma=loss.focal_gamma,
        focal_alpha=loss.focal_alpha,
        dice_naive=loss.dice_naive,
    )


# ------------------------------------------------------------------------------------------ automatic weights


def auto_class_weights(pixel_counts: Sequence[int], image_counts: Sequence[int]) -> list[float]:
    """Median-frequency balancing (Eigen & Fergus, ICCV 2015): w_c = median(freq) / freq_c.

    freq_c = pixel_counts[c] / image_counts[c]: the pixels of class c over the labelled pixels of the images
    in which c occurs; the median is over the classes that occur. A class that occurs in no image gets 1.0
    (its weight never meets a label; 1 keeps focal's push-down of its logit as unweighted).

    Raises:
        ValueError: lengths differ, a negative count, a class with more pixels than its images hold, or no
        labelled pixel at all.
    """
    pixels = np.asarray(pixel_counts, dtype=np.float64)
    images = np.asarray(image_counts, dtype=np.float64)
    if pixels.shape != images.shape or pixels.ndim != 1:
        raise ValueError(
            f"pixel_counts ({pixels.shape}) and image_counts ({images.shape}): expected one count per class each"
        )
    if (pixels < 0).any() or (pixels > images).any():
        raise ValueError("class counts: expected 0 <= pixels of a class <= labelled pixels of the images it occurs in")
    present = pixels > 0
    if not present.any():
        raise ValueError('class_weights = "auto": the training split has no labelled pixel')
    freq = np.divide(pixels, images, out=np.zeros_like(pixels), where=present)
    median = float(np.median(freq[present]))
    return [median / f if p else 1.0 for f, p in zip(freq.tolist(), present.tolist(), strict=True)]


def count_class_pixels(
    dataset, num_classes: int, workers: int = 0, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of each class, labelled pixels of the images where each class occurs) over ``dataset``'s masks.

    ``dataset.load(i)`` (the untransformed pair) is read where it exists, else ``dataset[i]``; either gives
    (image, H × W mask of class ids, 255 = ignore). Masks are read by ``workers`` threads (0 = up to 8).
    """
    read = dataset.load if hasattr(dataset, "load") else dataset.__getitem__
    pixels = np.zeros(num_classes, np.int64)
    images = np.zeros(num_classes, np.int64)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        masks = pool.map(lambda i: np.asarray(read(i)[1]), range(len(dataset)))
        for index, mask in enumerate(
            progress_bar(masks, total=len(dataset), desc="count classes", disable=not progress)
        ):
            labels = mask[mask != IGNORE_INDEX].astype(np.int64)
            counts = np.bincount(labels, minlength=num_classes)
            if counts.size > num_classes:
                raise ValueError(f"sample {index}: label {labels.max()} is no class id 0..{num_classes - 1} nor 255")
            pixels += counts
            images[counts > 0] += labels.size
    return pixels, images


def resolve_class_weights(loss: LossRecipe, dataset, num_classes: int, progress: bool = False) -> LossRecipe:
    """``loss`` with ``class_weights = "auto"`` replaced by the numbers of ``auto_class_weights`` on ``dataset``
    (the training split); any other ``loss`` is returned as it is."""
    if loss.class_weights != "auto":
        return loss
    weights = auto_class_weights(*count_class_pixels(dataset, num_classes, progress=progress))
    return dataclasses.replace(loss, class_weights=[float(f"{w:.6g}") for w in weights])
