"""What identifies the system node, so cluster tests can show they left it alone.

The system node is the one ``rabbitmqctl`` reaches without ``-n`` (``rabbit@localhost`` on
5672, shared by everything on the machine): its VM's OS pid, its cluster's running members, and
the files that would change if someone touched its cookie or configuration.
"""

from __future__ import annotations

import hashlib
import json
from typing import Dict, NamedTuple, Optional, Tuple

from tests.helpers import rabbitmqctl

__all__ = ['SystemNode', 'system_node', 'SYSTEM_FILES']

#: Files of the system node that a cluster started beside it must leave alone.
SYSTEM_FILES = (
    '/var/lib/rabbitmq/.erlang.cookie',
    '/etc/rabbitmq/rabbitmq.conf',
    '/etc/rabbitmq/rabbitmq-env.conf',
    '/etc/rabbitmq/enabled_plugins',
)


class SystemNode(NamedTuple):
    """The system node at one moment; two snapshots are equal if nothing touched it."""

    os_pid: str
    running_nodes: Tuple[str, ...]
    files: Dict[str, str]  # path -> sha256 of the content ('' if absent or unreadable)


def system_node() -> Optional[SystemNode]:
    """The system node as it is now, or None if ``rabbitmqctl`` cannot reach it (~1 s)."""
    try:
        status = json.loads(rabbitmqctl('status', '--formatter', 'json'))
        members = json.loads(rabbitmqctl('cluster_status', '--formatter', 'json'))
    except (RuntimeError, ValueError):
        return None
    return SystemNode(
        str(status['pid']),
        tuple(sorted(members['running_nodes'])),
        {path: _sha256(path) for path in SYSTEM_FILES},
    )


def _sha256(path: str) -> str:
    try:
        with open(path, 'rb') as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ''
