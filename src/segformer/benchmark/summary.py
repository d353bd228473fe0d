"""The JSON summary of a benchmark run: JSON Lines, one object per line, appended as each section measures.

Every line is one record: a figure row (``{"section": ..., "kind": "row", ...}``) or a section's outcome
(``{"section": ..., "kind": "status", "status": "ok" | "failed", "seconds": ..., "error": ...}``). A section's
records are appended in one write and flushed to disk at once, so a run that is killed keeps every section that
finished; the most a kill can leave is one incomplete last line, which ``read_records`` skips and the next append
starts after. Standard library only (no torch): the section runner of ``benchmarks/gpu.sh`` imports it per section.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def append_records(path: str | Path, section: str, records: list[dict], kind: str = "row") -> None:
    """Append ``records`` of ``section`` (each gets ``section`` and ``kind``) to the JSON Lines file ``path``."""
    lines = [json.dumps({"section": section, "kind": kind, **record}, allow_nan=True) for record in records]
    if not lines:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as f:  # appending: the position starts at the end
        torn = False
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        text = ("\n" if torn else "") + "\n".join(lines) + "\n"  # a torn last line stays apart from the new ones
        f.write(text.encode())
        f.flush()
        os.fsync(f.fileno())


def append_status(path: str | Path, section: str, status: str, seconds: float, error: str | None = None) -> None:
    """Append the outcome of ``section``: "ok" or "failed" (with its ``error``), and how long it ran."""
    append_records(path, section, [{"status": status, "seconds": round(seconds, 1), "error": error}], kind="status")


def read_records(path: str | Path) -> list[dict]:
    """Every complete record of the JSON Lines file ``path``, in order.

    Raises:
        ValueError: a line other than a torn one (a line that a kill cut short) is not a JSON object.
    """
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if line.lstrip().startswith("{") and not line.rstrip().endswith("}"):
                continue  # torn by a kill while it was written
            raise ValueError(f"{path}:{number}: not a JSON object: {line[:80]!r}") from None
        if not isinstance(record, dict) or "section" not in record:
            raise ValueError(f"{path}:{number}: expected an object with a 'section', got {line[:80]!r}")
        records.append(record)
    return records


def sections(records: list[dict]) -> dict[str, dict]:
    """Records grouped by section, in the order they first appear: ``{"rows": [...], "status": {...} | None}``."""
    grouped: dict[str, dict] = {}
    for record in records:
        entry = grouped.setdefault(record["section"], {"rows": [], "status": None})
        fields = {k: v for k, v in record.items() if k not in ("section", "kind")}
        if record.get("kind") == "status":
            entry["status"] = fields
        else:
            entry["rows"].append(fields)
    return grouped
