"""The synthetic shapes dataset: determinism, the on-disk round trip, and what the masks depict."""

import numpy as np

from segformer.data import SYNTHETIC_CLASSES, SyntheticDataset, build_dataset, generate_scene, write_synthetic


def test_same_seed_same_scenes_and_seeds_or_splits_differ():
    a, b = SyntheticDataset(3, (48, 64), seed=1), SyntheticDataset(3, (48, 64), seed=1)
    for i in range(3):
        for x, y in zip(a[i], b[i], strict=True):
            np.testing.assert_array_equal(x, y)
    image, mask = a[0]
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8 and mask.shape == (48, 64) and mask.dtype == np.uint8
    other_seed = SyntheticDataset(3, (48, 64), seed=2)
    other_split = SyntheticDataset(3, (48, 64), seed=1, split="val")
    assert not np.array_equal(a[0][0], other_seed[0][0]) and not np.array_equal(a[0][0], other_split[0][0])
    assert not np.array_equal(a[0][0], a[1][0])
    first = generate_scene(np.random.default_rng(5), (32, 32))
    second = generate_scene(np.random.default_rng(5), (32, 32))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_written_dataset_reads_back_exactly(tmp_path):
    root = write_synthetic(tmp_path / "shapes", num_train=4, num_val=3, size=(40, 56), seed=7)
    for split, num in (("train", 4), ("val", 3)):
        on_disk = build_dataset("custom", root, split)
        in_memory = SyntheticDataset(num, (40, 56), seed=7, split=split)
        assert len(on_disk) == num
        assert on_disk.classes == in_memory.classes == list(SYNTHETIC_CLASSES)
        np.testing.assert_array_equal(on_disk.palette, in_memory.palette)
        for i in range(num):
            assert on_disk.image_path(i).relative_to(root) == in_memory.image_path(i)
            np.testing.assert_array_equal(on_disk[i][0], in_memory[i][0])
            np.testing.assert_array_equal(on_disk[i][1], in_memory[i][1])


def test_every_class_appears_and_colour_does_not_identify_the_class():
    dataset = SyntheticDataset(40, (64, 64), seed=0)
    scenes = [dataset[i] for i in range(len(dataset))]
    masks = np.stack([mask for _, mask in scenes])
    assert set(np.unique(masks)) == set(range(len(SYNTHETIC_CLASSES)))
    fraction = np.bincount(masks.ravel(), minlength=len(SYNTHETIC_CLASSES)) / masks.size
    assert fraction[0] < 0.95 and (fraction[1:] > 0.01).all()
    # the mean colour of one class varies widely between scenes: colour alone cannot name the class
    for cls in range(1, len(SYNTHETIC_CLASSES)):
        means = [image[mask == cls].mean(axis=0) for image, mask in scenes if (mask == cls).sum() > 20]
        assert len(means) >= 3 and np.ptp(np.array(means), axis=0).max() > 100


def test_masks_depict_the_named_shapes():
    """Lone shapes clear of the border fill the share of their bounding box that their geometry implies."""
    dataset = SyntheticDataset(500, (64, 64), seed=3)
    found = {name: [] for name in SYNTHETIC_CLASSES[1:]}
    for i in range(len(dataset)):
        mask = dataset[i][1]
        present = np.unique(mask[mask > 0])
        ys, xs = np.nonzero(mask)
        if len(present) != 1 or min(ys.min(), xs.min()) == 0 or max(ys.max(), xs.max()) == 63:
            continue
        height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
        name = SYNTHETIC_CLASSES[present[0]]
        if name != "triangle" and abs(height - width) > 1:  # two overlapping instances (or a rotated cross)
            continue
        centre = mask[(ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2]
        found[name].append((len(ys) / (height * width), centre))
    assert all(len(v) >= 3 for v in found.values()), {k: len(v) for k, v in found.items()}
    # disc: pi/4 of its box; ring: less, and its centre is the hole; square (any rotation): 1/2 to 1 with a
    # filled centre; equilateral triangle: at most 1/2 (+ pixel rounding); cross: its centre is filled.
    assert all(abs(fill - np.pi / 4) < 0.06 and centre == 1 for fill, centre in found["disc"])
    assert all(fill < 0.65 and centre == 0 for fill, centre in found["ring"])
    assert all(0.5 < fill <= 1 and centre == 2 for fill, centre in found["square"])
    assert all(0.4 < fill < 0.56 for fill, _ in found["triangle"])
    assert all(centre == 5 for _, centre in found["cross"])
