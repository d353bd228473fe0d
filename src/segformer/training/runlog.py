"""What a run writes besides checkpoints: ``metrics.jsonl``, TensorBoard scalars and ``curves.png`` (rank 0 only)."""

from __future__ import annotations

import json
from pathlib import Path

from segformer.fileio import atomic_write
from segformer.plots import plot_curves


class RunLog:
    """``metrics.jsonl`` records, TensorBoard scalars (when installed) and ``curves.png`` of rank 0."""

    def __init__(self, run_dir: Path, enabled: bool, resume_from: int | None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.curves = run_dir / "curves.png"
        self.enabled = enabled
        self.records: list[dict] = []
        self.writer = None
        if not enabled:
            return
        if resume_from is not None and self.path.is_file():  # drop what a killed run logged after its checkpoint
            lines = self.path.read_text().splitlines()
            self.records = [r for r in map(json.loads, filter(None, lines)) if r["iter"] <= resume_from]
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        try:  # imported here: tensorboard is optional
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_from)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["iter"])

    def last_validation(self) -> dict | None:
        """The newest validation record (the one with ``mIoU``) logged so far, or None."""
        return next((r for r in reversed(self.records) if "mIoU" in r), None)

    def plot(self) -> None:
        if self.enabled:
            plot_curves(self.records, self.curves)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
