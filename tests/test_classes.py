"""Strict ``classes.txt``: names, optional colours, comments; every error names the file and the line."""

from pathlib import Path

import pytest

from segformer.data import build_dataset, write_synthetic
from segformer.data.classes import read_classes_file


def parse(tmp_path: Path, text: str):
    path = tmp_path / "classes.txt"
    path.write_text(text)
    return read_classes_file(path)


def test_names_colours_comments_and_blank_lines(tmp_path):
    text = "# my classes\n\nbackground 0 0 0\ntraffic light 250 170 30   # trailing comment\n  road 128 64 128\n"
    names, palette = parse(tmp_path, text)
    assert names == ("background", "traffic light", "road")
    assert palette == ((0, 0, 0), (250, 170, 30), (128, 64, 128))
    assert parse(tmp_path, "sky\n# a comment, not a class\nwall-brick\n") == (("sky", "wall-brick"), None)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("circle 0 0 0\nsquare 60 180 75 9\n", 2, "4 numbers after the name 'square'"),
        ("circle\nroute 66 east\n", 2, "may not be plain numbers ('66')"),
        ("circle 1 2\n", 1, "2 numbers after the name 'circle'"),
        ("a 0 0 0\n10 20 30\n", 2, "no class name before the numbers"),
        ("a 0 0 0\nb 0 256 0\n", 2, "colour 0 256 0 outside 0-255"),
        ("# header\nsky\nroad\nsky\n", 4, "class 'sky' already named on line 2"),
        ("sky 1 2 3\nroad\n", 2, "line 1 gives a colour but line 2 does not"),
        ("sky\n\nroad 1 2 3\n", 3, "line 3 gives a colour but line 1 does not"),
    ],
)
def test_errors_name_the_file_and_line(tmp_path, text, line, message):
    with pytest.raises(ValueError) as caught:
        parse(tmp_path, text)
    error = str(caught.value)
    assert error.startswith(f"{tmp_path / 'classes.txt'}:{line}: ") and message in error
    assert "\n" not in error


def test_empty_and_binary_files(tmp_path):
    with pytest.raises(ValueError, match=r"classes\.txt: no class names; expected one class per line"):
        parse(tmp_path, "# only a comment\n\n")
    (tmp_path / "classes.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        read_classes_file(tmp_path / "classes.txt")


def test_a_comment_line_is_not_class_zero_in_a_dataset(tmp_path):
    root = write_synthetic(tmp_path / "data", 0, 1, size=(32, 32), seed=0)
    text = (root / "classes.txt").read_text()
    (root / "classes.txt").write_text("# synthetic shapes\n" + text)
    dataset = build_dataset("custom", root, "val")
    assert dataset.classes == ["background", "disc", "square", "triangle", "ring", "cross"]
