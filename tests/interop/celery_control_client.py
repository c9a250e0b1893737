"""Celery's Python API for the remote control, run as a subprocess by
``test_celery_control.py``; prints one JSON object (kombu's JSON) with every answer.

Usage: ``python -m tests.interop.celery_control_client <node> <glob pattern>`` with
``AMQP_URL`` in the environment (the Celery app of :mod:`tests.interop.celery_tasks`).
Calls aimed at ``<node>`` return as soon as it replied; the pattern ping waits its 2 s.
"""

from __future__ import annotations

import sys

from kombu.utils.json import dumps

from tests.interop.celery_tasks import app


def main(node: str, pattern: str) -> None:
    inspect = app.control.inspect(destination=[node], timeout=10)
    out = {
        'inspect_ping': inspect.ping(),
        'control_ping': app.control.ping(destination=[node], timeout=10),
        'pattern_ping': app.control.inspect(pattern=pattern, matcher='glob', timeout=2).ping(),
        'stats': inspect.stats(),
        'registered': inspect.registered(),
        'active': inspect.active(safe=True),
        'revoke': app.control.revoke('api-revoked-id', destination=[node], reply=True, timeout=10),
        'revoked': inspect.revoked(),
        'rate_limit': app.control.rate_limit(
            'ctl.add', '1/s', destination=[node], reply=True, timeout=10
        ),
        'conf': inspect.conf(),  # a command pika_rpc's worker does not answer
    }
    print(dumps(out), flush=True)


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
