"""README's Django pieces (settings read by the App, a view that sends and waits), typed as
a user types them. Django ships no annotations and django-stubs is not installed here:
pyproject.toml makes Django's names Any, so what is checked is pika_rpc's side."""

from __future__ import annotations

import os
import threading
from typing import Any, Dict, Optional, Tuple

from django.core.cache import cache
from django.http import HttpRequest, JsonResponse

from pika_rpc import App, AsyncResult, PikaRPCError, states
from pika_rpc import TimeoutError as ResultTimeout

WAIT = 10.0
BACKGROUND_WAIT = 300.0
STORE_FOR = 3600

_app: Optional[App] = None
_lock = threading.Lock()


def get_app() -> App:
    global _app
    if _app is None:
        with _lock:
            if _app is None:
                app = App(main='djproject')
                app.config_from_object('django.conf:settings', namespace='CELERY')
                _app = app
    return _app


def _numbers(request: HttpRequest) -> Tuple[int, int]:
    return int(request.GET.get('x', 0)), int(request.GET.get('y', 0))


def _error(exc: BaseException, status: int) -> JsonResponse:
    return JsonResponse({'error': f'{type(exc).__name__}: {exc}'}, status=status)


def add(request: HttpRequest) -> JsonResponse:
    app = get_app()
    try:
        result = app.send_task('demo.add', _numbers(request))
    except PikaRPCError as exc:
        return _error(exc, 503)
    try:
        value = result.get(timeout=WAIT)
    except ResultTimeout:
        return JsonResponse(
            {'task_id': result.id, 'state': result.state, 'error': f'no result within {WAIT} s'},
            status=504,
        )
    except Exception as exc:
        return _error(exc, 502)
    return JsonResponse(
        {'task_id': result.id, 'result': value, 'pid': os.getpid(), 'oid': app.backend.oid}
    )


def state(request: HttpRequest, task_id: str) -> JsonResponse:
    meta: Dict[str, Any] = get_app().backend.get_task_meta(task_id)
    value = meta.get('result')
    if meta['status'] in states.EXCEPTION_STATES:
        value = repr(value)
    return JsonResponse({'task_id': task_id, 'status': meta['status'], 'result': value})


def _store_when_ready(result: AsyncResult, sender: int) -> None:
    outcome: Dict[str, Any]
    try:
        outcome = {'status': states.SUCCESS, 'result': result.get(timeout=BACKGROUND_WAIT)}
    except ResultTimeout:
        outcome = {'status': 'UNKNOWN', 'error': f'no result within {BACKGROUND_WAIT} s'}
    except Exception as exc:
        outcome = {'status': states.FAILURE, 'error': f'{type(exc).__name__}: {exc}'}
    cache.set(f'pika-rpc-result:{result.id}', dict(outcome, sender=sender), STORE_FOR)


def submit(request: HttpRequest) -> JsonResponse:
    result = get_app().send_task('demo.add', _numbers(request))
    threading.Thread(target=_store_when_ready, args=(result, os.getpid()), daemon=True).start()
    return JsonResponse({'task_id': result.id}, status=202)
