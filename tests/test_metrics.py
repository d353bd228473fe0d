"""ConfusionMatrix against hand-computed answers and an independent NumPy port of mmseg's IoUMetric."""

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segformer.metrics import ConfusionMatrix, format_table

NUM_CLASSES = 7
PER_CLASS = ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall")


def mmseg_reference(preds: list[np.ndarray], labels: list[np.ndarray], num_classes: int, ignore: int = 255) -> dict:
    """mmseg 1.x IoUMetric in plain NumPy: per-image histograms (as torch.histc), summed, then the ratios."""
    totals = np.zeros((4, num_classes))
    for pred, label in zip(preds, labels, strict=True):
        keep = label != ignore
        pred, label = pred[keep].astype(np.float64), label[keep].astype(np.float64)
        edges = dict(bins=num_classes, range=(0, num_classes - 1))
        area_intersect = np.histogram(pred[pred == label], **edges)[0]
        area_pred = np.histogram(pred, **edges)[0]
        area_label = np.histogram(label, **edges)[0]
        totals += [area_intersect, area_pred + area_label - area_intersect, area_pred, area_label]
    inter, union, pred_area, label_area = totals
    with np.errstate(divide="ignore", invalid="ignore"):
        precision, recall = inter / pred_area, inter / label_area
        out = {
            "IoU": inter / union,
            "Acc": inter / label_area,
            "Dice": 2 * inter / (pred_area + label_area),
            "Precision": precision,
            "Recall": recall,
            "Fscore": (1 + 1**2) * precision * recall / (1**2 * precision + recall),
        }
    out.update({"m" + k: np.nanmean(out[k]) for k in PER_CLASS})
    out["aAcc"] = inter.sum() / label_area.sum()
    # Frequency-weighted IoU (Long et al., FCN): sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii) / sum_i t_i.
    present = label_area > 0
    out["fwIoU"] = (label_area[present] * inter[present] / union[present]).sum() / label_area.sum()
    return out


def random_set(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images of different sizes with ignored pixels; class 5 never occurs, class 6 is only predicted."""
    rng = np.random.default_rng(seed)
    preds, labels = [], []
    for height, width in [(17, 23), (32, 32), (9, 40), (25, 11), (30, 19), (8, 8)]:
        label = rng.integers(0, 5, (height, width))
        pred = np.where(rng.random((height, width)) < 0.6, label, rng.integers(0, 5, (height, width)))
        pred[rng.random((height, width)) < 0.05] = 6
        label[rng.random((height, width)) < 0.15] = 255
        preds.append(pred.astype(np.int64))
        labels.append(label.astype(np.uint8))
    # class 4: present in labels and predictions but never correct, so its Fscore is mmseg's 0*0/(0+0) = NaN
    for pred in preds:
        pred[pred == 4] = 3
    preds[0][0, :3] = 4
    labels[0][0, :3] = 1
    return preds, labels


def assert_matches(results: dict, reference: dict) -> None:
    for key in PER_CLASS:
        np.testing.assert_allclose(results[key], reference[key], rtol=1e-12, equal_nan=True, err_msg=key)
    for key in ("mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall", "aAcc", "fwIoU"):
        assert results[key] == pytest.approx(reference[key], rel=1e-12), key


def test_hand_computed_example():
    pred = torch.tensor([[0, 0, 1], [1, 2, 2]])
    label = torch.tensor([[0, 1, 1], [255, 2, 0]])
    metric = ConfusionMatrix(4)
    metric.update(pred, label)
    r = metric.compute()
    # kept (label, pred): (0,0) (1,0) (1,1) (2,2) (0,2); I = 1,1,1; labelled 2,2,1; predicted 2,1,2; class 3 absent
    np.testing.assert_allclose(r["IoU"], [1 / 3, 1 / 2, 1 / 2, np.nan], equal_nan=True)
    np.testing.assert_allclose(r["Acc"], [1 / 2, 1 / 2, 1, np.nan], equal_nan=True)
    np.testing.assert_allclose(r["Dice"], [2 / 4, 2 / 3, 2 / 3, np.nan], equal_nan=True)
    np.testing.assert_allclose(r["Precision"], [1 / 2, 1, 1 / 2, np.nan], equal_nan=True)
    assert r["mIoU"] == pytest.approx(4 / 9)
    assert r["mAcc"] == pytest.approx(2 / 3)
    assert r["aAcc"] == pytest.approx(3 / 5)
    assert r["fwIoU"] == pytest.approx((2 / 3 + 2 / 2 + 1 / 2) / 5)
    np.testing.assert_array_equal(r["confusion"][:3, :3], [[1, 0, 1], [1, 1, 0], [0, 0, 1]])
    table = format_table(r, ["road", "car", "sky", "tree"])
    assert "road" in table and "33.33" in table and "tree" in table
    assert table.splitlines()[-1] == "aAcc 60.00  mIoU 44.44  mAcc 66.67"


def test_predicted_but_absent_class_counts_zero_and_never_seen_is_nan():
    metric = ConfusionMatrix(3)
    metric.update(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 0, 0, 0]))
    r = metric.compute()
    # class 1 predicted but never labelled: IoU 0 enters the mean; class 2 never seen: NaN, skipped
    np.testing.assert_allclose(r["IoU"], [0.5, 0.0, np.nan], equal_nan=True)
    assert math.isnan(r["Acc"][1]) and r["mIoU"] == pytest.approx(0.25) and r["mAcc"] == pytest.approx(0.5)
    assert math.isnan(r["Fscore"][1])  # precision 0, recall NaN


def test_matches_numpy_mmseg_reference():
    preds, labels = random_set()
    metric = ConfusionMatrix(NUM_CLASSES)
    for pred, label in zip(preds, labels, strict=True):
        metric.update(torch.from_numpy(pred), torch.from_numpy(label))
    metric.reduce()  # no process group: no-op
    results = metric.compute()
    reference = mmseg_reference(preds, labels, NUM_CLASSES)
    assert np.isnan(results["IoU"][5]) and results["IoU"][6] == 0 and np.isnan(results["Fscore"][4])
    assert_matches(results, reference)
    # a batch update (stacked, padded with ignore) gives the same counts as per-image updates
    batch = ConfusionMatrix(NUM_CLASSES)
    stacked_pred = np.zeros((len(preds), 32, 40), dtype=np.int64)
    stacked_label = np.full((len(preds), 32, 40), 255, dtype=np.uint8)
    for i, (pred, label) in enumerate(zip(preds, labels, strict=True)):
        stacked_pred[i, : pred.shape[0], : pred.shape[1]] = pred
        stacked_label[i, : label.shape[0], : label.shape[1]] = label
    batch.update(stacked_pred, stacked_label)
    np.testing.assert_array_equal(batch.compute()["confusion"], results["confusion"])


def test_bad_input_errors():
    metric = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        metric.update(torch.tensor([3, 1]), torch.tensor([0, 1]))
    metric.update(torch.tensor([9, 1]), torch.tensor([255, 1]))  # predictions on ignored pixels are not checked
    assert metric.compute()["confusion"].sum() == 1


def _distributed_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        preds, labels = random_set()
        halves = ConfusionMatrix(NUM_CLASSES)
        for pred, label in list(zip(preds, labels, strict=True))[rank::world_size]:
            halves.update(torch.from_numpy(pred), torch.from_numpy(label))
        halves.reduce()
        lopsided = ConfusionMatrix(NUM_CLASSES)  # rank 1 sees no data at all
        if rank == 0:
            for pred, label in zip(preds, labels, strict=True):
                lopsided.update(torch.from_numpy(pred), torch.from_numpy(label))
        lopsided.reduce()
        results = {"halves": halves.compute(), "lopsided": lopsided.compute()}
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), results, allow_pickle=True)
    finally:
        dist.destroy_process_group()


def test_distributed_reduce_matches_single_process(tmp_path):
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    preds, labels = random_set()
    reference = mmseg_reference(preds, labels, NUM_CLASSES)
    for rank in range(2):
        results = np.load(tmp_path / f"rank{rank}.npy", allow_pickle=True).item()
        assert_matches(results["halves"], reference)
        assert_matches(results["lopsided"], reference)
