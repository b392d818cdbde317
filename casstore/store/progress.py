"""The progress callback every long store and distribution command reports through."""

from __future__ import annotations

from collections.abc import Callable

# Called with the number of bytes (or objects) just done; the CLI feeds a progress bar.
Progress = Callable[[int], None]


def no_progress(_n: int) -> None:
    """The callback when nobody is watching."""
