"""The [loss] terms against NumPy implementations of their published formulas (mmseg's for CE, OHEM, focal and
Dice; Berman et al. for Lovász), the default against the trainer's loss, the automatic class weights by hand,
and the recipe section's checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segformer.recipe import LOSS_TERMS, dump_recipe, load_recipe, packaged_recipes
from segformer.training.losses import (
    auto_class_weights,
    build_loss,
    count_class_pixels,
    cross_entropy,
    dice_loss,
    focal_loss,
    lovasz_softmax,
    ohem_pixel_weights,
    resolve_class_weights,
)

K = 5  # classes; the masks below use only 0, 1 and 3 (2 and 4 are absent) and 255
CLASS_WEIGHTS = np.array([0.5, 2.0, 1.5, 3.0, 0.25])


def sample(seed: int = 0, size: int = 8, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Random B × K × H × W logits and B × H × W masks with ignored pixels and absent classes."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(2, K, size, size)) * scale).astype(np.float32)
    masks = rng.choice([0, 1, 3], size=(2, size, size), p=[0.5, 0.2, 0.3])
    masks[rng.random(masks.shape) < 0.2] = 255
    masks[1, :2] = 255
    return logits, masks


def torch_inputs(logits: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(logits), torch.from_numpy(masks).long()


# ------------------------------------------------------------------------------------------ NumPy oracles


def np_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_true_class_prob(logits: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """B × H × W softmax probability of each pixel's label (label 255 read as class 0)."""
    safe = np.where(masks == 255, 0, masks)
    return np.take_along_axis(np_softmax(logits), safe[:, None], axis=1)[:, 0]


def np_pixel_ce(logits: np.ndarray, masks: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """−w_y log softmax(x)_y per pixel, 0 where ignored."""
    safe = np.where(masks == 255, 0, masks)
    w = np.ones(K) if weights is None else weights
    loss = -np.log(np_true_class_prob(logits, masks)) * w[safe]
    return np.where(masks == 255, 0.0, loss)


def np_cross_entropy(logits, masks, weights=None, avg_non_ignore=False, pixel_weights=None) -> float:
    """mmseg CrossEntropyLoss: Σ w_y s l / N (all pixels) or / Σ_labelled w_y (avg_non_ignore, mmseg 1.x)."""
    loss = np_pixel_ce(logits, masks, weights)
    if pixel_weights is not None:
        loss = loss * pixel_weights
    if not avg_non_ignore:
        return loss.sum() / masks.size
    w = np.ones(K) if weights is None else weights
    labelled = masks != 255
    return loss.sum() / w[masks[labelled]].sum()


def np_ohem(logits, masks, thresh, min_kept, weights=None) -> np.ndarray:
    """mmseg OHEMPixelSampler: 0/1 weight per pixel."""
    labelled = masks != 255
    kept = min_kept * masks.shape[0]
    out = np.zeros(masks.shape)
    if thresh > 0:
        prob = np_true_class_prob(logits, masks)[labelled]
        threshold = max(np.sort(prob)[min(kept, prob.size - 1)], thresh)
        out[labelled] = prob < threshold
    else:
        losses = np_pixel_ce(logits, masks, weights)[labelled]
        chosen = np.zeros(losses.size)
        chosen[np.argsort(-losses)[:kept]] = 1
        out[labelled] = chosen
    return out


def np_focal(logits, masks, gamma, alpha, weights=None, pixel_weights=None) -> float:
    """mmseg sigmoid FocalLoss: BCE × (α t + (1−α)(1−t)) (1 − p_t)^γ, mean over B·H·W·K, ignored as 0."""
    x = logits.astype(np.float64)
    safe = np.where(masks == 255, 0, masks)
    t = (np.arange(K)[None, :, None, None] == safe[:, None]).astype(np.float64)
    p = 1 / (1 + np.exp(-x))
    bce = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    pt = p * t + (1 - p) * (1 - t)
    loss = bce * (alpha * t + (1 - alpha) * (1 - t)) * (1 - pt) ** gamma
    loss = loss * (masks != 255)[:, None]
    if pixel_weights is not None:
        loss = loss * pixel_weights[:, None]
    if weights is not None:
        loss = loss * weights[None, :, None, None]
    return loss.mean()


def np_dice(logits, masks, naive=False, eps=1e-3) -> float:
    """mmseg 1.x DiceLoss (softmax) per image over all classes and labelled pixels, mean over images."""
    labelled = (masks != 255)[:, None]
    p = np_softmax(logits) * labelled
    t = (np.arange(K)[None, :, None, None] == masks[:, None]) * labelled
    losses = []
    for pi, ti in zip(p, t, strict=True):
        a = (pi * ti).sum()
        if naive:
            d = (2 * a + eps) / (pi.sum() + ti.sum() + eps)
        else:
            d = 2 * a / ((pi**2).sum() + eps + (ti**2).sum() + eps)
        losses.append(1 - d)
    return float(np.mean(losses))


def np_lovasz(logits, masks, weights=None) -> float:
    """Lovász-softmax (Berman et al. 2018): per present class c, Σ_i m_(i) [Δ(M_i) − Δ(M_(i−1))], where m are the
    errors |1[y=c] − p_c| sorted decreasingly, M_i the i first pixels and Δ the Jaccard loss of mispredicting
    them; mean over the present classes, × class weight."""
    labelled = masks != 255
    prob = np_softmax(logits).transpose(0, 2, 3, 1)[labelled]
    labels = masks[labelled]
    losses = []
    for c in np.unique(labels):
        fg = labels == c
        errors = np.abs(fg - prob[:, c])
        order = np.argsort(-errors, kind="stable")
        total, previous = 0.0, 0.0
        for i in range(1, order.size + 1):
            current = jaccard_loss(fg, order[:i])
            total += errors[order[i - 1]] * (current - previous)
            previous = current
        losses.append(total * (1.0 if weights is None else weights[c]))
    return float(np.mean(losses))


def jaccard_loss(fg: np.ndarray, mispredicted: np.ndarray) -> float:
    """Δ_J(M) = |M| / |F ∪ M| (Berman et al., Eq. 4): F the pixels of the class, M the mispredicted ones."""
    m = np.zeros(fg.size, bool)
    m[mispredicted] = True
    return m.sum() / (fg | m).sum()


def np_resize(logits: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (align_corners=False), edges clamped."""

    def taps(n_in: int, n_out: int):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    y0, y1, ly = taps(logits.shape[2], size)
    x0, x1, lx = taps(logits.shape[3], size)
    x = logits.astype(np.float64)
    rows = x[:, :, y0] * (1 - ly)[:, None] + x[:, :, y1] * ly[:, None]
    return rows[..., x0] * (1 - lx) + rows[..., x1] * lx


# ------------------------------------------------------------------------------------------ the terms


@pytest.mark.parametrize("avg_non_ignore", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_numpy(avg_non_ignore, weighted):
    logits, masks = sample(0)
    weights = CLASS_WEIGHTS if weighted else None
    got = cross_entropy(
        *torch_inputs(logits, masks), None if weights is None else torch.tensor(weights).float(), avg_non_ignore
    )
    assert got.item() == pytest.approx(np_cross_entropy(logits, masks, weights, avg_non_ignore), rel=1e-5)


@pytest.mark.parametrize(
    ("thresh", "min_kept", "expect"),
    [
        (0.3, 2, "thresh decides"),
        (0.02, 20, "min_kept decides"),
        (0.3, 1000, "all but the most confident"),
        (0.0, 15, "top losses"),
    ],
)
def test_ohem_selects_the_pixels_mmseg_selects(thresh, min_kept, expect):
    logits, masks = sample(1)
    expected = np_ohem(logits, masks, thresh, min_kept, CLASS_WEIGHTS)
    labelled = int((masks != 255).sum())
    kept = int(expected.sum())
    # each case exercises its own branch of the rule
    assert {
        "thresh decides": 2 * min_kept < kept < labelled,
        "min_kept decides": kept == 2 * min_kept,
        "all but the most confident": kept == labelled - 1,
        "top losses": kept == 2 * min_kept,
    }[expect]
    got = ohem_pixel_weights(*torch_inputs(logits, masks), thresh, min_kept, torch.tensor(CLASS_WEIGHTS).float())
    np.testing.assert_array_equal(got.numpy(), expected)


def test_ohem_weights_enter_the_cross_entropy_mean():
    logits, masks = sample(2)
    recipe = load_recipe("custom", ["loss.ohem=true", "loss.ohem_thresh=0.3", "loss.ohem_min_kept=4"]).loss
    loss = build_loss(recipe, K)
    selected = np_ohem(logits, masks, 0.3, 4)
    assert 0 < selected.sum() < (masks != 255).sum()
    expected = np_cross_entropy(logits, masks, pixel_weights=selected)  # still divided by all B·H·W pixels
    assert loss(*torch_inputs(logits, masks)).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weighted", [False, True])
def test_focal_matches_numpy(weighted):
    logits, masks = sample(3)
    weights = CLASS_WEIGHTS if weighted else None
    pixel_weights = np.random.default_rng(0).integers(0, 2, masks.shape).astype(np.float32) if weighted else None
    got = focal_loss(
        *torch_inputs(logits, masks),
        gamma=2.0,
        alpha=0.25,
        class_weights=None if weights is None else torch.tensor(weights).float(),
        pixel_weights=None if pixel_weights is None else torch.from_numpy(pixel_weights),
    )
    assert got.item() == pytest.approx(np_focal(logits, masks, 2.0, 0.25, weights, pixel_weights), rel=1e-5)


@pytest.mark.parametrize("naive", [False, True])
def test_dice_matches_numpy(naive):
    logits, masks = sample(4)
    got = dice_loss(*torch_inputs(logits, masks), naive=naive)
    assert got.item() == pytest.approx(np_dice(logits, masks, naive), rel=1e-5)


@pytest.mark.parametrize("weighted", [False, True])
def test_lovasz_matches_the_lovasz_extension(weighted):
    logits, masks = sample(5, size=6)
    weights = CLASS_WEIGHTS if weighted else None
    got = lovasz_softmax(*torch_inputs(logits, masks), None if weights is None else torch.tensor(weights).float())
    assert got.item() == pytest.approx(np_lovasz(logits, masks, weights), rel=1e-5)


def test_lovasz_of_a_perfect_prediction_is_zero_and_of_only_ignored_pixels_too():
    masks = torch.tensor([[[0, 1], [1, 255]]])
    perfect = F.one_hot(masks.clamp(max=K - 1), K).permute(0, 3, 1, 2).float() * 50
    assert lovasz_softmax(perfect, masks).item() == pytest.approx(0.0, abs=1e-6)
    assert lovasz_softmax(perfect, torch.full_like(masks, 255)).item() == 0.0


def test_weighted_sum_on_one_resize_matches_numpy():
    logits, masks = sample(6, size=4)  # logits at H/4 of the 16 × 16 masks
    masks = np.repeat(np.repeat(masks, 4, axis=1), 4, axis=2)
    settings = [
        'loss.terms=["cross_entropy", "focal", "dice", "lovasz"]',
        "loss.weights=[1.0, 0.5, 2.0, 0.75]",
        f"loss.class_weights={CLASS_WEIGHTS.tolist()}",
        "loss.avg_non_ignore=true",
    ]
    loss = build_loss(load_recipe("custom", settings).loss, K)
    up = np_resize(logits, 16)
    expected = (
        np_cross_entropy(up, masks, CLASS_WEIGHTS, avg_non_ignore=True)
        + 0.5 * np_focal(up, masks, 2.0, 0.5, CLASS_WEIGHTS)
        + 2.0 * np_dice(up, masks)
        + 0.75 * np_lovasz(up, masks, CLASS_WEIGHTS)
    )
    got = loss(*torch_inputs(logits, masks))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)


def old_segmentation_loss(logits, masks, class_weights):
    """The trainer's loss before [loss] had terms (segformer.train.segmentation_loss at 301eff0)."""
    logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, masks, weight=class_weights, ignore_index=255, reduction="none").mean()


@pytest.mark.parametrize("name", packaged_recipes())
def test_every_packaged_recipe_gives_the_trainers_loss_exactly(name):
    logits, masks = sample(7, size=4)
    masks = np.repeat(np.repeat(masks, 4, axis=1), 4, axis=2)
    logits, masks = torch_inputs(logits, masks)
    assert torch.equal(build_loss(load_recipe(name).loss, K)(logits, masks), old_segmentation_loss(logits, masks, None))
    weighted = load_recipe(name, ["model.num_classes=0", f"loss.class_weights={CLASS_WEIGHTS.tolist()}"]).loss
    weights = torch.tensor(CLASS_WEIGHTS, dtype=torch.float32)
    half = logits.bfloat16()
    assert torch.equal(build_loss(weighted, K)(half, masks), old_segmentation_loss(half, masks, weights))


@pytest.mark.parametrize("term", LOSS_TERMS)
def test_gradients_reach_labelled_pixels_only(term):
    logits, masks = sample(8)
    logits, masks = torch_inputs(logits, masks)
    logits.requires_grad_(True)
    build_loss(load_recipe("custom", [f'loss.terms=["{term}"]']).loss, K)(logits, masks).backward()
    per_pixel = logits.grad.abs().sum(dim=1)
    assert (per_pixel[masks == 255] == 0).all()
    assert (per_pixel[masks != 255] > 0).float().mean() > 0.9


# ------------------------------------------------------------------------------------------ class weights


# two 2 × 2 masks: classes 0, 1, 2 occur, class 3 does not
HAND_MASKS = [np.array([[0, 0], [1, 255]], np.uint8), np.array([[0, 2], [2, 2]], np.uint8)]


def test_auto_class_weights_by_hand():
    # pixels: c0 2 + 1, c1 1, c2 3; labelled pixels of the images where each occurs: c0 3 + 4, c1 3, c2 4
    # freq = 3/7, 1/3, 3/4; median 3/7; w = 1, (3/7)/(1/3) = 9/7, (3/7)/(3/4) = 4/7; absent class 3 → 1
    pixels, images = count_class_pixels([(None, m) for m in HAND_MASKS], 4)
    assert pixels.tolist() == [3, 1, 3, 0]
    assert images.tolist() == [7, 3, 4, 0]
    assert auto_class_weights(pixels, images) == pytest.approx([1.0, 9 / 7, 4 / 7, 1.0], rel=1e-12)


def test_auto_class_weights_refuse_bad_counts():
    with pytest.raises(ValueError, match="one count per class"):
        auto_class_weights([1, 2], [3])
    with pytest.raises(ValueError, match="no labelled pixel"):
        auto_class_weights([0, 0], [0, 0])
    with pytest.raises(ValueError, match="<= labelled pixels"):
        auto_class_weights([5, 1], [4, 4])


def test_auto_resolves_into_the_recipe(tmp_path):
    recipe = load_recipe("custom", ['loss.class_weights="auto"'])
    dataset = [(None, m) for m in HAND_MASKS]
    with pytest.raises(ValueError, match="resolve_class_weights"):
        build_loss(recipe.loss, 4)
    resolved = dataclasses.replace(recipe, loss=resolve_class_weights(recipe.loss, dataset, 4))
    assert resolved.loss.class_weights == pytest.approx([1.0, 9 / 7, 4 / 7, 1.0], rel=1e-5)  # 6 digits
    path = tmp_path / "recipe.toml"
    path.write_text(dump_recipe(resolved))
    assert load_recipe(path).loss.class_weights == resolved.loss.class_weights
    assert build_loss(resolved.loss, 4).class_weights.tolist() == pytest.approx(resolved.loss.class_weights)
    assert resolve_class_weights(resolved.loss, dataset, 4) is resolved.loss  # numbers stay as they are


def test_count_class_pixels_names_a_label_that_is_no_class():
    with pytest.raises(ValueError, match="sample 1: label 2"):
        count_class_pixels([(None, m) for m in HAND_MASKS], 2)


# ------------------------------------------------------------------------------------------ recipe checks


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('loss.terms=["cross_entropy", "tversky"]', "loss.terms must be a list of: cross_entropy, focal"),
        ("loss.terms=[]", "loss.terms must be a list of"),
        ('loss.terms=["dice", "dice"]', "loss.terms must be distinct"),
        ("loss.weights=[1.0, 1.0]", r"loss.weights must be one weight per term of loss.terms \(1 terms, got 2"),
        ("loss.weights=[0.0]", "loss.weights must be > 0"),
        ('loss.class_weights="median"', 'loss.class_weights must be .*"auto"'),
        ('loss.class_weights=[1.0, "x"]', r"loss.class_weights\[1\]: expected float"),
        ("loss.class_weights=[-1.0, 2.0]", "loss.class_weights must be >= 0"),
        ("loss.avg_non_ignore=1", "loss.avg_non_ignore: expected bool"),
        ("loss.ohem_thresh=1.5", r"loss.ohem_thresh must be in \[0, 1\]"),
        ("loss.ohem_min_kept=0", "loss.ohem_min_kept must be >= 1"),
        ("loss.focal_alpha=2.0", r"loss.focal_alpha must be in \[0, 1\]"),
        ("loss.focal_gamma=-1.0", "loss.focal_gamma must be >= 0"),
    ],
)
def test_recipe_rejects_bad_loss_values_naming_the_key(setting, message):
    with pytest.raises(ValueError, match=message):
        load_recipe("custom", [setting])


def test_recipe_rejects_ohem_without_a_pixel_wise_term_and_weights_for_other_class_counts():
    with pytest.raises(ValueError, match="loss.ohem must be false unless"):
        load_recipe("custom", ['loss.terms=["dice"]', "loss.ohem=true"])
    with pytest.raises(ValueError, match=r"model.num_classes = 3, got 2 weights"):
        load_recipe("custom", ["model.num_classes=3", "loss.class_weights=[1.0, 2.0]"])
    with pytest.raises(ValueError, match="has 2 values for 5 classes"):
        build_loss(load_recipe("custom", ["loss.class_weights=[1.0, 2.0]"]).loss, K)


def test_recipe_reads_a_loss_section_with_every_key():
    loss = load_recipe("custom", ['loss.terms=["cross_entropy", "lovasz"]', "loss.weights=[1, 2]"]).loss
    assert (loss.terms, loss.weights) == (["cross_entropy", "lovasz"], [1.0, 2.0])
    assert load_recipe("custom", ["loss.class_weights=[1, 2]"]).loss.class_weights == [1.0, 2.0]
