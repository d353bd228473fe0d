"""Progress that fits terminals, logs and notebooks: a bar on a terminal, plain lines in a log file."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm


class LineProgress:
    """A tqdm stand-in for non-terminal output: one plain line every ``every_seconds`` and at the end.

    Supports the parts of tqdm's interface the project uses: ``update``, ``set_postfix``, ``write``,
    ``close``, iteration and use as a context manager.
    """

    def __init__(
        self,
        iterable: Any = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        every_seconds: float = 30.0,
    ) -> None:
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.n = desc, unit, initial
        self.every_seconds = every_seconds
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every_seconds:
            self._last = now
            self._print()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _print(self) -> None:
        total = f"/{self.total}" if self.total is not None else ""
        elapsed = time.monotonic() - self._start
        postfix = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {self.n}{total} {self.unit} in {elapsed:.0f} s{postfix}", file=sys.stderr, flush=True)

    @staticmethod
    def write(text: str, file: Any = None) -> None:
        print(text, file=file or sys.stdout, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._print()


def progress_bar(
    iterable: Any = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    quiet: bool = False,
    disable: bool = False,
) -> Any:
    """A tqdm bar when stderr is a terminal, plain periodic lines otherwise, nothing when ``quiet``/``disable``."""
    if quiet or disable:
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)
