"""``Task.apply()``: the task runs here, now, in this thread, as Celery's ``apply``; and
``apply_async`` refuses a soft time limit above the hard one, as Celery's. No broker: the
App connects lazily and nothing here sends."""

from __future__ import annotations

import threading
from typing import Any, Dict, List

import pytest

from pika_rpc import App, states


@pytest.fixture
def app() -> App:
    return App('eager', broker='amqp://guest:guest@127.0.0.1:1//')


def test_apply_runs_the_function_here_and_returns_a_ready_result(app: App) -> None:
    threads: List[Any] = []

    @app.task(name='e.add')
    def add(x: int, y: int) -> int:
        threads.append(threading.current_thread())
        return x + y

    result = add.apply((2, 3))
    assert threads == [threading.current_thread()]
    assert (result.get(), result.state, result.ready(), result.successful()) == (
        5,
        states.SUCCESS,
        True,
        True,
    )


def test_a_bound_task_sees_its_ids_and_nested_applies_follow_their_parent(app: App) -> None:
    seen: Dict[str, Any] = {}

    @app.task(bind=True, name='e.child')
    def child(self: Any) -> str:
        seen['child'] = (self.request.id, self.request.parent_id, self.request.root_id)
        return str(self.request.id)

    @app.task(bind=True, name='e.parent')
    def parent(self: Any) -> str:
        seen['parent'] = (self.request.id, self.request.parent_id, self.request.root_id)
        return str(child.apply().get())

    result = parent.apply(task_id='p-1')
    parent_id, parent_parent, parent_root = seen['parent']
    assert (parent_id, parent_parent, parent_root) == ('p-1', None, 'p-1')
    child_id, child_parent, child_root = seen['child']
    assert (child_parent, child_root) == ('p-1', 'p-1') and child_id != 'p-1'
    assert result.get() == child_id
    assert app.tasks['e.child'].request is None  # the context ended with the run


def test_a_failure_is_in_the_result_or_raised_with_throw(app: App) -> None:
    @app.task(name='e.boom')
    def boom() -> None:
        raise KeyError('boom')

    result = boom.apply()
    assert (result.state, result.failed()) == (states.FAILURE, True)
    assert 'KeyError' in str(result.traceback)
    with pytest.raises(KeyError):
        result.get()
    assert isinstance(result.get(propagate=False), KeyError)
    with pytest.raises(KeyError):
        boom.apply(throw=True)


def test_apply_checks_the_arguments_as_delay_does(app: App) -> None:
    @app.task(name='e.one')
    def one(x: int) -> int:
        return x

    with pytest.raises(TypeError):
        one.apply((1, 2))


def test_a_soft_time_limit_above_the_hard_one_is_refused_before_anything_is_sent(app: App) -> None:
    @app.task(name='e.limits', soft_time_limit=2, time_limit=1)
    def limits() -> None:
        pass

    with pytest.raises(ValueError, match='soft_time_limit must be less than or equal'):
        limits.apply_async()
    with pytest.raises(ValueError, match='soft_time_limit must be less than or equal'):
        app.tasks['e.limits'].apply_async(time_limit=5, soft_time_limit=6)
