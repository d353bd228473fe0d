"""The independent oracle: transformers' SegformerForSemanticSegmentation, randomly initialised."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import SegformerConfig, SegformerForSemanticSegmentation

# Paper Table 6, written out here independently of segformer.config.VARIANTS.
HF_VARIANTS = {
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
    "b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
    "b3": ([64, 128, 320, 512], [3, 4, 18, 3], 768),
    "b4": ([64, 128, 320, 512], [3, 8, 27, 3], 768),
    "b5": ([64, 128, 320, 512], [3, 6, 40, 3], 768),
}


def make_hf_model(variant: str, num_labels: int = 7, seed: int = 0, **config) -> SegformerForSemanticSegmentation:
    """A random HF SegFormer in eval mode with non-trivial BatchNorm statistics and O(1) logits."""
    torch.manual_seed(seed)
    widths, depths, decoder = HF_VARIANTS[variant]
    cfg = SegformerConfig(
        num_labels=num_labels, hidden_sizes=widths, depths=depths, decoder_hidden_size=decoder, **config
    )
    model = SegformerForSemanticSegmentation(cfg).eval()
    head = model.decode_head
    perturb_batchnorm(head.batch_norm)
    with torch.no_grad():
        head.classifier.weight.normal_(0.0, decoder**-0.5)
        head.classifier.bias.normal_(0.0, 0.1)
        for proj in head.linear_projections:
            proj.proj.bias.normal_(0.0, 0.1)
    return model


def perturb_batchnorm(bn: nn.BatchNorm2d) -> None:
    """Non-trivial running statistics and affine parameters (fresh ones are 0, 1, 1, 0), as after training."""
    with torch.no_grad():
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0.0, 0.2)
        bn.num_batches_tracked.fill_(1000)


# --- training helpers (trainer tests) -------------------------------------------------------------------------


def tiny_recipe(root, overrides: dict | None = None):
    """The demo recipe on 64×64 synthetic scenes at ``root``: batch 2, 4 iterations (2 warm-up), checkpoints every 2.

    ``overrides`` maps recipe keys ("schedule.iters", "data.photometric" …) to ``--set`` values.
    """
    from segformer.recipe import load_recipe

    settings = {
        "schedule.iters": 4,
        "schedule.val_interval": 0,
        "schedule.ckpt_interval": 2,
        "schedule.log_interval": 1,
        "data.batch_size": 2,
        "data.crop": "[64, 64]",
        "data.scale": "[64, 64]",
        "data.test_scale": "[64, 64]",
        "optim.warmup_iters": 2,
        "train.published_batch": 0,  # batch 2 is far from the demo's 8 on purpose: no warning
        **(overrides or {}),
    }
    recipe = load_recipe("demo", [f"{k}={v}" for k, v in settings.items()])
    recipe.data.root = str(root)
    return recipe


def numpy_counts(predictions, labels, num_classes: int):
    """Whole-set intersection, union and labelled pixels per class (label 255 ignored), counted with NumPy."""
    intersection, union, labelled = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    for pred, label in zip(predictions, labels, strict=True):
        keep = label != 255
        for k in range(num_classes):
            p, t = (pred == k) & keep, (label == k) & keep
            intersection[k] += (p & t).sum()
            union[k] += (p | t).sum()
            labelled[k] += t.sum()
    return intersection, union, labelled


def numpy_miou(predictions, labels, num_classes: int) -> float:
    """mmseg mIoU: whole-set intersection / union per class, mean over classes with a union."""
    intersection, union, _ = numpy_counts(predictions, labels, num_classes)
    present = union > 0
    return float((intersection[present] / union[present]).mean())


def numpy_confidence(logits) -> tuple[np.ndarray, np.ndarray]:
    """The oracle of ``segformer.scores``: float64 NumPy softmax over dim 0 of K×H×W logits, then round(max p ×
    65535) and round(−Σ p ln p / ln K × 65535), half to even, as float64 arrays of whole numbers."""
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=0))
    p = exp / exp.sum(axis=0)
    entropy = -(p * np.log(p, where=p > 0, out=np.zeros_like(p))).sum(axis=0) / np.log(len(p))
    return np.rint(p.max(axis=0) * 65535), np.rint(np.clip(entropy, 0, 1) * 65535)


def ring_area(ring) -> float:
    """Area of a closed polygon ring of (x, y) points (the shoelace formula)."""
    x, y = np.asarray(ring, dtype=np.float64).T
    return 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def write_clip(path, frames, rate, codec: str = "ffv1", pix_fmt: str = "bgr0") -> None:
    """A clip of H×W×3 uint8 ``frames`` at ``rate`` frames/s (PyAV); FFV1 RGB, the default, is lossless: its decoded
    frames are the frames written."""
    import av  # the test extra has it; imported here so that tests without video need not

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


def decoded(path, stream_index: int = 0, format: str = "rgb24") -> tuple[list[np.ndarray], dict]:
    """Frames of one video stream, decoded as predict_video decodes them, and the stream's size, rate and codec."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[stream_index]
        frames = [frame.to_ndarray(format=format) for frame in container.decode(stream)]
        info = {"size": (stream.width, stream.height), "rate": stream.average_rate, "codec": stream.codec_context.name}
    return frames, info


def write_sound(path) -> None:
    """A file with one short silent audio stream and no video stream (PyAV)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
