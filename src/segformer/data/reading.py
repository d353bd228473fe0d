"""Reading image and mask files: the one image reader of training, eval and predict, and the one mask reader.

``IMAGE_SUFFIXES`` lists the image files that folders are searched for (``segformer predict DIR``, the custom
dataset): formats Pillow decodes with its own bundled libraries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _open(path: Path, kind: str) -> Image.Image:
    """Open and decode an image file, raising errors that name it."""
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {kind} file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot read {kind} file: corrupt or not an image ({e})") from None
    return image


def read_image(source: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    """Read an image file, a PIL image or an array as RGB: the one image reader of training, eval and predict.

    Files and PIL images get their EXIF orientation applied (a PIL image given is not modified). Grayscale,
    palette, RGBA (alpha dropped, as OpenCV does) and 16-bit images (scaled to 8 bits, round(v / 257)) are
    converted to RGB; arrays may be H×W, H×W×1, H×W×3 (RGB) or H×W×4 (RGBA), uint8 or 16-bit.

    Returns:
        ``H × W × 3`` uint8 array (an H×W×3 uint8 array is returned as it is).

    Raises:
        FileNotFoundError / ValueError: naming the file, when it is missing or not a readable image; ValueError
        for an array of another shape or dtype.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        image = ImageOps.exif_transpose(source)  # a transposed copy
    else:
        image = _open(Path(source), "image")
        ImageOps.exif_transpose(image, in_place=True)
    if image.mode in _SIXTEEN_BIT_MODES:
        return _array_to_rgb(np.asarray(image))
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype in (np.uint16, np.int32):  # 16-bit values (Pillow reads 16-bit PNGs as int32 "I")
        array = np.clip(np.rint(array.astype(np.float32) / 257.0), 0, 255).astype(np.uint8)
    channels = array.shape[2] if array.ndim == 3 else 1
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or channels not in (1, 3, 4):
        raise ValueError(
            f"image array: expected H×W, H×W×1, H×W×3 (RGB) or H×W×4 (RGBA), uint8 or 16-bit; "
            f"got shape {array.shape}, dtype {array.dtype}"
        )
    if channels == 1:
        return np.repeat(array.reshape(*array.shape[:2], 1), 3, axis=2)
    return np.ascontiguousarray(array if channels == 3 else array[:, :, :3])


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label mask as stored, without any colour conversion (a palette PNG gives its indices).

    Single-channel 8/16-bit masks give their values; RGB(A) masks are accepted only when their colour channels
    are equal (a grayscale mask saved as RGB).

    Returns:
        ``H × W`` uint8 array of stored label values.

    Raises:
        FileNotFoundError / ValueError: naming the file, when it is missing, unreadable or not a class-id mask.
    """
    path = Path(path)
    image = _open(path, "mask")
    mask = np.array(image)
    if image.mode in ("RGB", "RGBA", "LA"):
        channels = mask[..., :3] if image.mode != "LA" else mask[..., :1]
        if not (channels == channels[..., :1]).all():
            raise ValueError(
                f"{path}: colour-coded {image.mode} mask; expected class ids in one channel (a palette or "
                "grayscale PNG). Convert colour masks to class-index PNGs first."
            )
        mask = channels[..., 0]
    elif image.mode not in ("P", "L", "1", *_SIXTEEN_BIT_MODES):
        raise ValueError(f"{path}: unsupported mask mode {image.mode!r}; expected a palette or grayscale PNG")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(f"{path}: mask values outside 0..255 (range {mask.min()}..{mask.max()})")
        mask = mask.astype(np.uint8)
    return mask
