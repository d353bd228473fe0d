"""The text of a ``classes.txt`` (``name r g b`` lines) for classes taken from other tools' label lists.

Names are checked against the rules ``segformer.data.classes.read_classes_file`` reads by, so that the file
written reads back to the same names and colours; an error names where the bad name came from.
"""

from __future__ import annotations

from collections.abc import Sequence

from segformer.data.classes import _INTEGER


def classes_file_text(names: Sequence[str], palette: Sequence[Sequence[int]], origins: Sequence[str]) -> str:
    """``classes.txt`` text of ``names`` with their colours, one ``name r g b`` line per class.

    Args:
        names: class names, class id 0 first; runs of white space inside a name become one space.
        palette: one (r, g, b) per class, integers 0-255.
        origins: for each class, where its name came from (e.g. ``"instances.json: category id 5"``), for errors.

    Raises:
        ValueError: naming the origin, for a name that ``classes.txt`` cannot hold (empty, holding ``#``, or
            with a word that is a plain number) or that repeats another class's name.
    """
    if not len(names) == len(palette) == len(origins):
        raise ValueError(
            f"{len(names)} class names, {len(palette)} colours and {len(origins)} origins; expected one each"
        )
    lines: list[str] = []
    seen: dict[str, str] = {}
    for name, colour, origin in zip(names, palette, origins, strict=True):
        words = str(name).split()
        if "#" in str(name) or not words:
            raise ValueError(
                f"{origin}: class name {name!r} cannot be written to classes.txt: it is empty or holds '#'"
            )
        numbers = [word for word in words if _INTEGER.fullmatch(word)]
        if numbers:
            raise ValueError(
                f"{origin}: class name {name!r} cannot be written to classes.txt: its word {numbers[0]!r} is a plain "
                "number, which classes.txt reads as a colour value; rename it (e.g. 'route-66')"
            )
        r, g, b = (int(c) for c in colour)
        if any(not 0 <= c <= 255 for c in (r, g, b)):
            raise ValueError(f"{origin}: colour {(r, g, b)} of class {name!r} outside 0-255")
        parsed = " ".join(words)
        if parsed in seen:
            raise ValueError(
                f"{origin}: class name {parsed!r} is also the name of {seen[parsed]}; names must be unique"
            )
        seen[parsed] = origin
        lines.append(f"{parsed} {r} {g} {b}")
    return "\n".join(lines) + "\n"
