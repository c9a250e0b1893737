"""The command line: ``pika-rpc worker -A module -Q queues -c N`` (the console script), or
``python -m pika_rpc worker ...`` (the same program); ``pika-rpc --version`` prints the version.

``-A`` names a module, or ``module:attribute``, holding an ``App`` (attribute ``app`` by
default); importing it registers its tasks. The current directory is put first on
``sys.path``, as ``celery -A`` does, so ``-A tasks`` finds ``./tasks.py``.

Once the worker consumes, one line is printed on stdout::

    pika_rpc worker <hostname> ready: queues <q1,q2>, concurrency <N>

``--queue-type quorum`` declares the queues named with ``-Q`` (and the default queue) that
do not exist yet as quorum queues: it sets ``task_default_queue_type`` and
``task_create_missing_queue_type`` for this worker (queues of ``task_queues`` keep their
own type; an existing queue is used as it is).

Startup waits for the broker as Celery's worker does (``broker_connection_retry_on_startup``,
default True): one WARNING line per failed attempt, ``Cannot connect to <masked URL>:
<reason>; retrying in N s (attempt k of n)``, the first one saying what to do; when the
retries run out (``broker_connection_max_retries``), or at the first failure with
``broker_connection_retry_on_startup=False``, the process exits 4 after a CRITICAL line
with the reason and the advice.

If the worker fails (a queue it cannot consume again after ``broker_consumer_max_retries``
refusals), it stops gracefully and the process exits 3, after a CRITICAL line saying why.

Shutdown: the first SIGTERM or SIGINT, or Celery's ``celery control shutdown`` aimed at this
node, starts a graceful stop (no new task starts, waiting messages go back to the queue,
running tasks finish and are stored, up to ``--stop-timeout`` seconds); the process then
exits 0 (1 if tasks had to be abandoned). A SIGTERM/SIGINT during that stop exits at once
with status 1 (running tasks' messages return to the queue and run again elsewhere). The
signals are taken with ``sigtimedwait`` in the main thread (blocked in every other thread),
so no handler runs at an arbitrary point of the program; it also looks, every 0.2 s,
whether a remote ``shutdown`` stopped the worker or the worker failed. Logs go to stderr in
a readable format.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from typing import Any, List, Optional, Union

from ._connector import Connector
from ._link import IDLE, OPEN
from ._version import __version__
from .app import App
from .config import connection_options
from .errors import ConnectionLost
from .worker import Worker

LOGGER = logging.getLogger(__name__)

__all__ = ['main', 'load_app']

LOG_FORMAT = '[%(asctime)s: %(levelname)s/%(threadName)s] %(name)s: %(message)s'
_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def load_app(spec: str) -> App:
    """Import ``module`` or ``module:attribute`` and return the ``App`` it names.

    Raises:
        SystemExit: the module cannot be imported or holds no App there (with a message).
    """
    module_name, _, attr = spec.partition(':')
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f'error: cannot import {module_name!r} given with -A: {exc}') from exc
    obj: Any = module
    for part in (attr or 'app').split('.'):
        obj = getattr(obj, part, None)
        if obj is None:
            raise SystemExit(
                f'error: {module_name!r} has no attribute {attr or "app"!r}: '
                f'name the App as -A {module_name}:<attribute>'
            )
    if not isinstance(obj, App):
        raise SystemExit(f'error: -A {spec} is a {type(obj).__name__}, not a pika_rpc App')
    return obj


def _prog() -> str:
    """How the program was started, for usage lines: ``pika-rpc`` or ``python -m pika_rpc``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ''
    return 'python -m pika_rpc' if name in ('', '__main__.py', '-c') else name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_prog(), description='pika_rpc: Celery rpc:// on pika')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    sub = parser.add_subparsers(dest='command', required=True)
    worker = sub.add_parser('worker', help='run tasks from a queue in a thread pool')
    worker.add_argument('-A', '--app', required=True, help='module or module:attribute of the App')
    worker.add_argument(
        '-Q',
        '--queues',
        default=None,
        help='comma-separated queue names (default: task_default_queue)',
    )
    worker.add_argument('-c', '--concurrency', type=int, default=1, help='pool threads (default 1)')
    worker.add_argument(
        '--queue-type',
        choices=('classic', 'quorum'),
        default=None,
        help='type of the queues this worker creates (default: task_default_queue_type and '
        'task_create_missing_queue_type, classic)',
    )
    worker.add_argument(
        '--prefetch-count',
        type=int,
        default=None,
        help='unacked messages per queue (default concurrency x '
        'worker_prefetch_multiplier; 0 = unlimited)',
    )
    worker.add_argument(
        '-n', '--hostname', default=None, help='node name (default pika_rpc<pid>@host)'
    )
    worker.add_argument(
        '-l',
        '--loglevel',
        default='INFO',
        help='DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)',
    )
    worker.add_argument(
        '--stop-timeout',
        type=float,
        default=30.0,
        help='seconds a graceful stop waits for running tasks (default 30)',
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    level = getattr(logging, str(args.loglevel).upper(), None)
    if not isinstance(level, int):
        raise SystemExit(f'error: unknown log level {args.loglevel!r}')
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    if level > logging.DEBUG:  # pika logs every channel open/close at INFO
        logging.getLogger('pika').setLevel(max(level, logging.WARNING))
    # Before any thread exists, so every thread inherits the mask: only sigwait() sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    app = load_app(args.app)
    if args.queue_type is not None:
        app.conf.update(
            task_default_queue_type=args.queue_type, task_create_missing_queue_type=args.queue_type
        )
    down = _wait_for_broker(app)
    if down is not None:
        if isinstance(down, int):
            LOGGER.info(
                '%s received while waiting for the broker: exiting', signal.Signals(down).name
            )
            _close(app)
            return 1
        LOGGER.critical('worker not started: %s', down)
        _close(app)
        return EXIT_NO_BROKER
    worker = Worker(
        app,
        queues=args.queues,
        concurrency=args.concurrency,
        prefetch_count=args.prefetch_count,
        hostname=args.hostname,
        stop_timeout=args.stop_timeout,
    )
    try:
        worker.start()
    except Exception as exc:
        LOGGER.critical('worker could not start: %s', exc, exc_info=True)
        return 1
    print(
        f'pika_rpc worker {worker.hostname} ready: queues '
        f'{",".join(q.name for q in worker.queues)}, concurrency {worker.concurrency}',
        flush=True,
    )
    signum = _wait_for_stop(worker)
    if signum is None and worker.failure is not None:
        return _failed(worker, app, args.stop_timeout)
    LOGGER.info(
        '%s: warm shutdown (waiting up to %s s for running tasks; send SIGTERM or SIGINT '
        'to exit at once)',
        'remote shutdown' if signum is None else f'{signal.Signals(signum).name} received',
        args.stop_timeout,
    )
    outcome: List[bool] = []
    stopper = threading.Thread(
        target=lambda: outcome.append(worker.stop(args.stop_timeout)),
        name='pika-rpc-stop',
        daemon=True,
    )
    stopper.start()
    while stopper.is_alive():
        if signal.sigtimedwait(_SIGNALS, 0.2) is not None:
            LOGGER.warning(
                'signal during the warm shutdown: cold shutdown; running tasks are '
                'abandoned and their messages return to the queue'
            )
            return 1
    try:
        app.close()
    except Exception as exc:
        LOGGER.warning('closing the app failed: %s', exc)
    return 0 if outcome and outcome[0] else 1


#: The exit status of a worker that failed (a queue it could not consume again).
EXIT_FAILED = 3
#: The exit status of a worker that could not reach the broker at startup.
EXIT_NO_BROKER = 4


def _wait_for_broker(app: App) -> Union[None, int, BaseException]:
    """Connect before the worker starts; None once connected, else why not (the number of
    the signal that ended the wait, or the error).

    With ``broker_connection_retry_on_startup`` (default True, as Celery's) the link's retry
    policy runs its course (``broker_connection_max_retries``, kombu's intervals): each
    failed attempt logs one WARNING ``Cannot connect to <masked URL>: <reason>; retrying in
    N s`` (the first with what to do), and when the policy gives up its ``ConnectionLost``
    (the advice included) is returned. With False, one attempt is made first, by a
    connector of its own that does not retry, and its failure ends it.
    SIGTERM/SIGINT meanwhile end it too (the process exits 1). Blocks the main thread."""
    if not app.conf.broker_connection_retry_on_startup:
        # One attempt of our own (a connector that does not retry), so the one WARNING says
        # "giving up"; the link's own policy applies once the worker runs.
        once = Connector(
            connection_options(app.conf), 'pika-rpc-startup', max_retries=0, interval=(0, 0, 0)
        )
        outcome = once.cycle(lambda: once.open_connection().close(), _noop, threading.Event())
        if outcome is not None:
            return outcome if isinstance(outcome, BaseException) else None
    link = app.connection_for_write().link
    start = link.failed_attempts
    link.revive()  # starts the connection cycle now; nothing else asks for it yet

    def settled() -> bool:
        failed = link.failed_attempts > start
        return link.state == OPEN or link.closed or (failed and link.state == IDLE)

    while not link.wait_until_state(settled, 0.2):
        info = signal.sigtimedwait(_SIGNALS, 0)
        if info is not None:
            return info.si_signo
    if link.state == OPEN:
        return None
    return link.unreachable() or ConnectionLost(f'{link!r} closed while connecting')


def _noop() -> None:
    pass


def _close(app: App) -> None:
    try:
        app.close()
    except Exception as exc:
        LOGGER.warning('closing the app failed: %s', exc)


def _wait_for_stop(worker: Worker) -> Optional[int]:
    """Block until SIGTERM/SIGINT (returns its number), or until the worker was asked to stop
    by Celery's ``control shutdown`` or failed (returns None; ``worker.failure`` says which)."""
    while not worker.stop_requested and worker.failure is None:
        info = signal.sigtimedwait(_SIGNALS, 0.2)
        if info is not None:
            return info.si_signo
    return None


def _failed(worker: Worker, app: App, stop_timeout: float) -> int:
    LOGGER.critical('worker %s failed: %s', worker.hostname, worker.failure)
    worker.stop(stop_timeout)
    try:
        app.close()
    except Exception as exc:
        LOGGER.warning('closing the app failed: %s', exc)
    return EXIT_FAILED
