"""CVAT's "Segmentation mask 1.1" export: its ``labelmap.txt`` as a ``classes.txt``.

The export is datumaro's Pascal VOC layout (CVAT's ``cvat/apps/dataset_manager/formats/mask.py`` writes it with
datumaro's ``voc_format`` plugin): colour masks in ``SegmentationClass/`` and a ``labelmap.txt`` naming each
label's colour, as datumaro's ``write_label_map`` writes it::

    # label:color_rgb:parts:actions
    background:0,0,0::
    car:255,0,0::

``labelmap_classes`` reads the labels in file order (class id = line order, the first label 0, as datumaro's
``parse_label_map`` numbers them) and ``write_labelmap_classes`` writes them as ``name r g b`` lines, so the
colour masks read through the colours of ``classes.txt``.
"""

from __future__ import annotations

from pathlib import Path

from segformer.data.classes_writer import classes_file_text
from segformer.fileio import atomic_write

LABELMAP_FORMAT = "expected 'name:r,g,b:parts:actions' lines (CVAT's labelmap.txt), '#' starting a comment line"


def labelmap_classes(path: str | Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """The label names and colours of a CVAT ``labelmap.txt``, in file order.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file and line, for a line without a name or an ``r,g,b`` colour of three
            integers 0-255, a colour given to two labels, or a file without labels.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: CVAT labelmap file not found") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); {LABELMAP_FORMAT}") from None
    names: list[str] = []
    colours: dict[tuple[int, int, int], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        name, channels = fields[0].strip(), fields[1].split(",") if len(fields) > 1 else []
        where = f"{path}:{number}"
        if not name:
            raise ValueError(f"{where}: no label name before ':'; {LABELMAP_FORMAT}")
        if len(channels) != 3 or not all(c.strip().isdigit() and int(c) <= 255 for c in channels):
            raise ValueError(f"{where}: label {name!r} has no colour r,g,b of integers 0-255; {LABELMAP_FORMAT}")
        colour = tuple(int(c) for c in channels)
        if colour in colours:
            raise ValueError(f"{where}: colour {colour} is also that of line {colours[colour]}; expected one per label")
        colours[colour] = number
        names.append(name)
    if not names:
        raise ValueError(f"{path}: no labels; {LABELMAP_FORMAT}")
    return tuple(names), tuple(colours)


def write_labelmap_classes(labelmap: str | Path, classes_file: str | Path) -> tuple[str, ...]:
    """Write the labels of a CVAT ``labelmap.txt`` as a ``classes.txt`` (``name r g b`` lines), atomically.

    Returns:
        The class names, class id 0 first.

    Raises:
        ValueError: as ``labelmap_classes``, or naming the line of a label name ``classes.txt`` cannot hold
            (a word that is a plain number, a ``#``, a name given twice).
    """
    names, palette = labelmap_classes(labelmap)
    origins = [f"{labelmap}: label {name!r}" for name in names]
    text = classes_file_text(names, palette, origins)
    atomic_write(classes_file, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return names
