"""Values shared by data loading, training and inference.

From the official configs (NVlabs/SegFormer ``local_configs/_base_/datasets/ade20k_repeat.py`` and
``cityscapes_1024x1024_repeat.py``).
"""

# ImageNet statistics on RGB 0–255, as in the official configs' img_norm_cfg.
IMAGE_MEAN = (123.675, 116.28, 103.53)
IMAGE_STD = (58.395, 57.12, 57.375)

# Label value that the loss and the metrics ignore (and that pads masks).
IGNORE_INDEX = 255
