"""``ignore_result``: the result is ``ignored`` and ``get()`` returns None at once, as Celery's.

Celery 5.7 (``celery.app.base.Celery.send_task``, ``celery.result.AsyncResult.get``): the
``AsyncResult`` of a task sent with ``ignore_result`` has ``ignored=True``; its ``get()``
returns None before any check or wait; ``state`` and ``ready()`` are not special (nothing
arrives: ``PENDING``, False). ``Task.apply_async`` takes the task's option, else the
``task_ignore_result`` setting. Each ``get()`` runs on a helper thread joined with a bound,
so a ``get()`` that would block forever fails the test instead of hanging it.
"""

from __future__ import annotations

import threading
from typing import Any, List

import pika
import pytest

from pika_rpc import App, states
from pika_rpc.errors import TimeoutError
from tests.helpers import pika_parameters
from tests.integration.worker_support import app, start_worker  # noqa: F401

WAIT = 30.0


def get_in_thread(result: Any, **kwargs: Any) -> List[Any]:
    """``result.get(**kwargs)`` on a helper thread: ``[value]``, or ``[]`` if still blocked."""
    got: List[Any] = []
    thread = threading.Thread(target=lambda: got.append(result.get(**kwargs)), daemon=True)
    thread.start()
    thread.join(WAIT)
    return got


def sent_header(amqp_url: str, queue: str) -> Any:
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        method, props, _ = conn.channel().basic_get(queue, auto_ack=True)
    assert method is not None
    return props.headers['ignore_result']


def test_send_task_with_ignore_result_returns_an_ignored_result_whose_get_returns_none(
    app: App, amqp_url: str, unique_name: str
) -> None:
    result = app.send_task('t.nobody_runs_it', ignore_result=True)
    assert result.ignored is True
    assert get_in_thread(result) == [None]  # no timeout: returns at once
    assert get_in_thread(result, timeout=0, propagate=True) == [None]
    assert result.state == states.PENDING and not result.ready()
    assert sent_header(amqp_url, unique_name) is True


def test_delay_of_a_task_declared_ignore_result_is_ignored(
    app: App, amqp_url: str, unique_name: str
) -> None:
    @app.task(name='t.fire', ignore_result=True)
    def fire() -> str:
        return 'dropped'

    result = fire.delay()
    assert result.ignored is True and get_in_thread(result) == [None]
    assert sent_header(amqp_url, unique_name) is True


def test_the_task_ignore_result_setting_makes_delay_ignored_unless_the_task_says_otherwise(
    app: App, amqp_url: str, unique_name: str
) -> None:
    app.conf.task_ignore_result = True

    @app.task(name='t.quiet')
    def quiet() -> None:
        pass

    @app.task(name='t.loud', ignore_result=False)
    def loud() -> None:
        pass

    assert quiet.delay().ignored is True
    assert sent_header(amqp_url, unique_name) is True
    loud_result = loud.delay()
    assert loud_result.ignored is False
    assert sent_header(amqp_url, unique_name) is False
    with pytest.raises(TimeoutError, match=loud_result.id):  # waits: a result may come
        loud_result.get(timeout=0)


def test_results_not_ignored_still_wait(app: App) -> None:
    result = app.send_task('t.nobody_runs_it')
    assert result.ignored is False
    with pytest.raises(TimeoutError, match=result.id):
        result.get(timeout=0)


def test_an_ignored_task_run_by_a_worker_gets_none_while_others_get_their_value(
    app: App, start_worker: Any
) -> None:
    ran = threading.Event()

    @app.task(name='t.fire', ignore_result=True)
    def fire() -> str:
        ran.set()
        return 'dropped'

    @app.task(name='t.add')
    def add(x: int, y: int) -> int:
        return x + y

    start_worker(concurrency=1)
    fired = fire.delay()
    assert get_in_thread(fired) == [None]
    assert ran.wait(WAIT)
    assert add.delay(2, 2).get(timeout=WAIT) == 4  # one pool thread: fire is done
    assert fired.state == states.PENDING and get_in_thread(fired) == [None]
