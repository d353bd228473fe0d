"""A deterministic synthetic segmentation dataset: shapes that only their outline tells apart.

Each scene is a dark textured background with 1-4 bright, overlapping objects (disc, square, triangle, ring,
cross) whose colours and textures are drawn per instance, so a model has to learn shape, not colour. Scenes are a pure
function of (seed, split, index): ``SyntheticDataset`` serves them from memory and ``write_synthetic`` writes
them in the custom-folder layout that ``build_dataset("custom", root, split)`` reads back unchanged.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from segformer.config import TestProtocol
from segformer.data.base import BaseSegmentationDataset, DatasetInfo
from segformer.progress import progress_bar

SYNTHETIC_CLASSES = ("background", "disc", "square", "triangle", "ring", "cross")
SYNTHETIC_PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48))


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, base: np.ndarray, contrast: float) -> np.ndarray:
    """A random texture (flat, gradient, fine stripes or pixel noise) between ``base`` and a colour near it.

    The second colour differs from ``base`` by at most ``contrast`` per channel.

    Returns:
        ``H × W × 3`` float32 array (possibly a broadcast view).
    """
    other = np.clip(base + rng.uniform(-contrast, contrast, 3), 0, 255).astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:
        return np.broadcast_to(base.astype(np.float32), (*yy.shape, 3))
    if kind == 3:
        weight = rng.random(yy.shape, dtype=np.float32)
    else:
        angle = rng.uniform(0, np.pi)
        along = xx * np.cos(angle) + yy * np.sin(angle)
        if kind == 1:
            weight = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        else:
            weight = (np.sin(along * (2 * np.pi / rng.uniform(4, 12))) > 0).astype(np.float32)
    return base + weight[..., None] * (other - base)


def _shape(kind: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Boolean mask of one randomly placed, sized and rotated shape of class ``kind`` (1..5)."""
    height, width = yy.shape
    side = rng.uniform(0.25, 0.5) * min(height, width)
    dy, dx = yy - rng.uniform(0.1, 0.9) * height, xx - rng.uniform(0.1, 0.9) * width
    angle = rng.uniform(0, 2 * np.pi)
    u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
    radius2 = dx * dx + dy * dy
    half = side / 2
    if kind == 1:  # disc
        return radius2 <= half * half
    if kind == 2:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= half
    if kind == 3:  # equilateral triangle, inradius 0.35 side (so its side is about 1.2 side)
        inside = np.ones(yy.shape, dtype=bool)
        for corner in range(3):
            normal = angle + 2 * np.pi * corner / 3
            inside &= dx * np.cos(normal) + dy * np.sin(normal) <= 0.35 * side
        return inside
    if kind == 4:  # ring
        inner = half * rng.uniform(0.45, 0.65)
        return (radius2 <= half * half) & (radius2 > inner * inner)
    arm = half * rng.uniform(0.25, 0.35)  # cross: two bars of width 2 arm
    return ((np.abs(u) <= half) & (np.abs(v) <= arm)) | ((np.abs(v) <= half) & (np.abs(u) <= arm))


def generate_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene: a dark textured background, 1-4 bright shapes painted over each other, pixel noise.

    Every shape gets its own random colour (each channel in 130..255, the background's in 0..100) and texture,
    so brightness separates objects from the background and only their outline tells the classes apart.

    Args:
        rng: the random generator; the scene is a pure function of its state.
        size: (height, width).

    Returns:
        ``H × W × 3`` uint8 RGB image and ``H × W`` uint8 mask of ``SYNTHETIC_CLASSES`` ids.
    """
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = rng.uniform(0, 100, 3)
    image = _texture(rng, yy, xx, background, contrast=40).copy()
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(rng.integers(1, 5)):
        kind = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        inside = _shape(kind, rng, yy, xx)
        colour = rng.uniform(130, 255, 3)
        image[inside] = _texture(rng, yy, xx, colour, contrast=40)[inside]
        mask[inside] = kind
    image += rng.normal(0, rng.uniform(0, 6), image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


class SyntheticDataset(BaseSegmentationDataset):
    """``num`` synthetic scenes served from memory with the ``SegmentationDataset`` interface.

    Scene ``i`` of a split is drawn from ``np.random.default_rng([seed, crc32(split), i])``, so splits differ
    and any scene can be produced on its own. Its test protocol is whole-image inference at the scenes' size.

    Args:
        num: number of scenes.
        size: (height, width) of every scene.
        seed: base seed.
        transform: callable ``(image, mask) -> anything`` applied by ``__getitem__``.
        split: split name mixed into the seed.
    """

    def __init__(
        self,
        num: int,
        size: tuple[int, int] = (256, 256),
        seed: int = 0,
        transform: Callable | None = None,
        split: str = "train",
    ) -> None:
        if num < 0:
            raise ValueError(f"num must be >= 0, got {num}")
        protocol = TestProtocol(scale=(max(size), min(size)))
        super().__init__(DatasetInfo("synthetic", SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, protocol), transform)
        self.num = num
        self.size = tuple(size)
        self.seed = seed
        self.split = split
        self.samples: list[tuple[Path, Path]] = []  # nothing on disk

    def __len__(self) -> int:
        return self.num

    def image_path(self, index: int) -> Path:
        """A virtual path: the file name ``write_synthetic`` gives this scene."""
        return Path("images", self.split, f"{index:05d}.png")

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed image and mask of scene ``index``."""
        if not 0 <= index < self.num:
            raise IndexError(f"scene {index} out of range for {self.num} scenes")
        rng = np.random.default_rng([self.seed, zlib.crc32(self.split.encode()), index])
        return generate_scene(rng, self.size)


def write_synthetic(
    root: str | Path, num_train: int, num_val: int, size: tuple[int, int] = (256, 256), seed: int = 0
) -> Path:
    """Write train and val scenes in the custom-folder layout read by ``build_dataset("custom", root, split)``.

    Writes ``images/{train,val}/NNNNN.png`` (lossless), ``masks/{train,val}/NNNNN.png`` (palette PNGs of class
    ids) and ``classes.txt`` (one ``name r g b`` per line).

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    for split, num in (("train", num_train), ("val", num_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        dataset = SyntheticDataset(num, size, seed, split=split)
        for index in progress_bar(range(num), desc=f"synthetic {split}", unit="scene"):
            image, mask = dataset.load(index)
            Image.fromarray(image).save(root / dataset.image_path(index), compress_level=1)
            mask_file = Image.fromarray(mask)
            mask_file.putpalette(np.asarray(SYNTHETIC_PALETTE, dtype=np.uint8).tobytes())
            mask_file.save(root / "masks" / split / f"{index:05d}.png", compress_level=1)
    lines = [f"{name} {r} {g} {b}" for name, (r, g, b) in zip(SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, strict=True)]
    (root / "classes.txt").write_text("\n".join(lines) + "\n")
    return root
