"""What the server accepts: the largest upload and the largest image (no heavy imports: ``segformer serve
--help`` shows the defaults without loading torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Largest upload in bytes and largest image in pixels (width × height) the server accepts."""

    max_bytes: int = 20 << 20
    max_pixels: int = 4096 * 4096
