"""A parsed protocol-v2 task message (``protocol.parse_task_message`` makes them).

Its own module so that a process that only sends tasks and waits for results never builds
the dataclass (``protocol.TaskRequest`` loads it on first use).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional, Tuple

__all__ = ['TaskRequest']


@dataclass
class TaskRequest:
    """A parsed protocol-v2 task message. ``task`` is an alias of ``name`` (Celery's Context)."""

    id: str
    name: str
    args: list
    kwargs: dict
    eta: Optional[datetime] = None
    expires: Optional[datetime] = None
    retries: int = 0
    timelimit: Tuple[Optional[float], Optional[float]] = (None, None)
    reply_to: Optional[str] = None
    correlation_id: Optional[str] = None
    root_id: Optional[str] = None
    parent_id: Optional[str] = None
    group: Optional[str] = None
    group_index: Optional[int] = None
    ignore_result: Optional[bool] = None
    origin: Optional[str] = None
    shadow: Optional[str] = None
    argsrepr: Optional[str] = None
    kwargsrepr: Optional[str] = None
    replaced_task_nesting: int = 0
    stamped_headers: Optional[list] = None
    stamps: dict = field(default_factory=dict)
    callbacks: Optional[list] = None
    errbacks: Optional[list] = None
    chain: Optional[list] = None
    chord: Optional[dict] = None
    priority: Optional[int] = None
    delivery_info: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    hostname: Optional[str] = None  # set by the worker that runs it

    @property
    def task(self) -> str:
        return self.name

    @property
    def time_limit(self) -> Optional[float]:
        return self.timelimit[0]

    @property
    def soft_time_limit(self) -> Optional[float]:
        return self.timelimit[1]
