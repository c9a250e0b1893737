"""Views sending pika_rpc tasks. Every view may run in any thread of any server process.

* ``/add?x=1&y=2``: sends ``demo.add`` and waits for its result in the same request. This
  always works: the request that sends is the one that waits.
* ``/send`` + ``/state/<id>``: send now, ask later with ``get_task_meta()``. A result
  reaches only the process that sent the task, so ``/state`` served by another process
  says PENDING for ever (the known limit, as with Celery's ``rpc://``).
* ``/submit`` + ``/status/<id>``: the fix for "ask later": the sending process waits in the
  background and writes the outcome to a store every process reads (here Django's cache).
"""

import os
import threading

from django.core.cache import cache
from django.http import JsonResponse

from pika_rpc import PikaRPCError, states
from pika_rpc import TimeoutError as ResultTimeout

from .pika_app import get_app

WAIT = 10.0  # how long /add waits for a result
BACKGROUND_WAIT = 300.0  # how long the sender of /submit waits before giving up
STORE_FOR = 3600  # seconds a stored outcome stays in the cache


def _numbers(request):
    return int(request.GET.get('x', 0)), int(request.GET.get('y', 0))


def _error(exc, status):
    return JsonResponse(
        {'error': f'{type(exc).__name__}: {exc}', 'pid': os.getpid()}, status=status
    )


def info(request):
    return JsonResponse({'pid': os.getpid(), 'oid': get_app().backend.oid})


def add(request):
    app = get_app()
    try:
        result = app.send_task('demo.add', _numbers(request))
    except PikaRPCError as exc:  # no broker, publish not confirmed, ...
        return _error(exc, 503)
    try:
        value = result.get(timeout=WAIT)
    except ResultTimeout:
        return JsonResponse(
            {'task_id': result.id, 'state': result.state, 'error': f'no result within {WAIT} s'},
            status=504,
        )
    except Exception as exc:  # the task failed: its exception re-raised
        return _error(exc, 502)
    return JsonResponse(
        {'task_id': result.id, 'result': value, 'pid': os.getpid(), 'oid': app.backend.oid}
    )


def send(request):
    try:
        result = get_app().send_task('demo.add', _numbers(request))
    except PikaRPCError as exc:
        return _error(exc, 503)
    return JsonResponse({'task_id': result.id, 'pid': os.getpid()})


def state(request, task_id):
    meta = get_app().backend.get_task_meta(task_id)
    value = meta.get('result')
    if meta['status'] in states.EXCEPTION_STATES:
        value = repr(value)
    return JsonResponse(
        {'task_id': task_id, 'status': meta['status'], 'result': value, 'pid': os.getpid()}
    )


def _store_when_ready(result, sender):
    try:
        outcome = {'status': states.SUCCESS, 'result': result.get(timeout=BACKGROUND_WAIT)}
    except ResultTimeout:
        outcome = {'status': 'UNKNOWN', 'error': f'no result within {BACKGROUND_WAIT} s'}
    except Exception as exc:
        outcome = {'status': states.FAILURE, 'error': f'{type(exc).__name__}: {exc}'}
    cache.set(f'pika-rpc-result:{result.id}', dict(outcome, sender=sender), STORE_FOR)


def submit(request):
    try:
        result = get_app().send_task('demo.add', _numbers(request))
    except PikaRPCError as exc:
        return _error(exc, 503)
    sender = os.getpid()
    cache.set(
        f'pika-rpc-result:{result.id}', {'status': states.PENDING, 'sender': sender}, STORE_FOR
    )
    # Daemon: a server shutting down does not wait for it (the outcome is then never stored).
    threading.Thread(
        target=_store_when_ready, args=(result, sender), daemon=True, name=f'wait-{result.id}'
    ).start()
    return JsonResponse({'task_id': result.id, 'pid': sender}, status=202)


def status(request, task_id):
    stored = cache.get(f'pika-rpc-result:{task_id}')
    if stored is None:
        return JsonResponse(
            {'task_id': task_id, 'status': 'UNKNOWN', 'pid': os.getpid()}, status=404
        )
    return JsonResponse(dict(stored, task_id=task_id, pid=os.getpid()))
