"""One deadline per blocking call: validate once, compute once, pass what remains."""

from __future__ import annotations

import time
from typing import Optional


def deadline(timeout: Optional[float]) -> Optional[float]:
    """Return the monotonic deadline for ``timeout`` seconds (None = forever).

    Raises:
        ValueError: ``timeout`` is negative, NaN or a bool.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not timeout >= 0:  # `not >=` also rejects NaN
        raise ValueError(f'timeout must be None or >= 0 seconds, got {timeout!r}')
    return time.monotonic() + timeout


def remaining(dl: Optional[float]) -> Optional[float]:
    """Seconds left until ``dl`` (never negative); None for no deadline."""
    return None if dl is None else max(0.0, dl - time.monotonic())
