"""Safe reading of checkpoint files and atomic writing of every output file.

Reading never unpickles code: ``.safetensors`` goes through safetensors, everything else through
``torch.load(weights_only=True)``. Writing goes to a temporary file in the same folder that is
renamed over the target, so a killed process or a full disk never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file

T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: missing, corrupt, truncated or unsafe."""


def read_tensors(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file without executing code from it.

    Raises:
        CheckpointError: naming the file, when it is missing, unreadable, or needs arbitrary unpickling.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device=str(map_location))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(
                f"{path}: refused to load: the file holds pickled Python objects beyond tensors "
                f"({found.group(1) or found.group(2)}), and unpickling them could run arbitrary code. Load it "
                "only if you trust it, re-save its state_dict with torch.save, or convert it to safetensors."
            ) from None
        raise CheckpointError(f"{path}: corrupt checkpoint (not a readable torch file)") from None
    except Exception as e:  # torch.load on random bytes raises anything (IndexError, KeyError …)
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {e})") from None


def read_json(path: str | Path) -> dict:
    """Read a JSON object; raise CheckpointError naming the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _umask() -> int:
    """The process's file-mode creation mask (``os.umask`` can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    The temporary file lies in the target's folder (so the rename is atomic) and gets the mode a new file
    would get under the user's umask. Readers see the previous file or the complete new one, never a part.

    Raises:
        OSError: naming ``path`` and saying the previous file is intact, when writing fails (disk full,
            permissions …); the temporary file is removed and the errno kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates the file 0600
        finally:
            os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            raise OSError(e.errno, f"{path}: cannot write ({e.strerror or e}); {kept}") from e
        raise


def atomic_write_all(paths: Sequence[str | Path], write: Callable[[list[str]], T]) -> T:
    """``write(temporary paths)`` for several files at once, each then renamed onto its path (the first
    last), as ``atomic_write``; if ``write`` fails, none of them is written. Returns what ``write`` returns."""
    result: list[T] = []

    def nested(index: int, temporary: list[str]) -> None:
        if index == len(paths):
            result.append(write(temporary))
        else:
            atomic_write(paths[index], lambda tmp: nested(index + 1, [*temporary, tmp]))

    nested(0, [])
    return result[0]


def atomic_write_json(path: str | Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))
