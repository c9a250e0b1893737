"""``@app.task`` options checked at decoration, Celery's rate and backoff arithmetic, the token
bucket, the argument check of ``typing``, and raising in a running thread. No broker: the
App never connects (nothing here sends)."""

from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest

from pika_rpc import App
from pika_rpc._interrupt import AVAILABLE, Interruptible
from pika_rpc._rate_limit import TokenBucket
from pika_rpc._task_options import HONOURED, REFUSED, SEND_OPTIONS, backoff, rate
from pika_rpc.errors import SoftTimeLimitExceeded


@pytest.fixture
def app() -> Any:
    return App(broker='amqp://guest:guest@127.0.0.1:5672//')


def decorate(app: Any, **options: Any) -> Any:
    @app.task(name='t.fun', **options)
    def fun(x, y=1):
        return x + y

    return fun


@pytest.mark.parametrize('option', sorted(REFUSED))
def test_an_unsupported_celery_option_is_refused_at_decoration_saying_why(app, option):
    with pytest.raises(TypeError) as info:
        decorate(app, **{option: True})
    text = str(info.value)
    assert repr(option) in text and 'not supported by pika_rpc' in text
    assert REFUSED[option] in text
    assert 't.fun' not in app.tasks


def test_an_unknown_option_is_refused_at_decoration_listing_the_options(app):
    with pytest.raises(TypeError, match="unknown task option 'rate_limt'.*rate_limit"):
        decorate(app, rate_limt='1/s')


def test_the_honoured_and_send_options_and_the_refused_ones_do_not_overlap():
    assert not HONOURED & SEND_OPTIONS
    assert not (HONOURED | SEND_OPTIONS) & set(REFUSED)


@pytest.mark.parametrize(
    'options, error, words',
    [
        ({'rate_limit': 'fast'}, ValueError, 'rate_limit'),
        ({'rate_limit': '10/d'}, ValueError, 'rate_limit'),
        ({'rate_limit': -1}, ValueError, 'rate_limit'),
        ({'time_limit': 0}, ValueError, 'time_limit'),
        ({'soft_time_limit': float('inf')}, ValueError, 'soft_time_limit'),
        ({'autoretry_for': ('ValueError',)}, TypeError, 'autoretry_for'),
        ({'throws': 3}, TypeError, 'throws'),
        ({'retry_kwargs': {'countdwn': 1}}, TypeError, 'countdwn'),
        ({'retry_kwargs': [1]}, TypeError, 'retry_kwargs'),
        ({'retry_backoff': 'yes'}, ValueError, 'retry_backoff'),
        ({'max_retries': -1}, ValueError, 'max_retries'),
        ({'acks_late': 'yes'}, TypeError, 'acks_late'),
        ({'serializer': 'nope'}, ValueError, 'nope'),
        ({'priority': 300}, ValueError, 'priority'),
    ],
)
def test_a_bad_option_value_is_refused_at_decoration(app, options, error, words):
    with pytest.raises(error, match=words):
        decorate(app, **options)


def test_the_honoured_options_become_attributes_and_the_send_options_defaults(app):
    task = decorate(
        app,
        rate_limit='10/m',
        autoretry_for=[KeyError],
        retry_backoff=True,
        retry_kwargs={'max_retries': 5},
        acks_late=False,
        time_limit=10,
        soft_time_limit=5,
        queue='q',
        serializer='json',
    )
    assert task.rate_limit == '10/m' and task.autoretry_for == (KeyError,)
    assert task.retry_backoff is True and task.retry_backoff_max == 600 and task.retry_jitter
    assert task.acks_late is False and task.typing is True and task.max_retries == 3
    assert task.options == {
        'time_limit': 10,
        'soft_time_limit': 5,
        'queue': 'q',
        'serializer': 'json',
    }


def test_typing_raises_type_error_at_delay_as_celery(app):
    task = decorate(app)
    with pytest.raises(TypeError, match=r't\.fun\(x, y=1\).*missing a required argument'):
        task.delay()
    with pytest.raises(TypeError, match='too many positional arguments'):
        task.apply_async((1, 2, 3))
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        task.apply_async((1,), {'z': 2})


def test_typing_leaves_out_self_of_a_bound_task(app):
    @app.task(name='t.bound', bind=True)
    def bound(self, x):
        return x

    with pytest.raises(TypeError, match='missing a required argument'):
        bound.delay()
    bound.check_arguments((1,), {})  # no error


def test_typing_false_sends_whatever_arguments_it_is_given(app, monkeypatch):
    sent: List[Any] = []
    monkeypatch.setattr(app, 'send_task', lambda *a, **kw: sent.append((a, kw)))
    task = decorate(app, typing=False)
    task.delay(1, 2, 3)
    assert sent[0][0] == ('t.fun', (1, 2, 3), {})


def test_the_send_options_given_to_the_decorator_reach_send_task(app, monkeypatch):
    sent: List[Any] = []
    monkeypatch.setattr(app, 'send_task', lambda *a, **kw: sent.append(kw))
    task = decorate(app, rate_limit='1/s', acks_late=True, queue='q', time_limit=30)
    task.delay(1)
    assert sent == [{'task_id': None, 'queue': 'q', 'time_limit': 30}]


@pytest.mark.parametrize(
    'value, per_second',
    [
        (None, 0.0),
        ('', 0.0),
        (0, 0.0),
        ('10/s', 10.0),
        ('10', 10.0),
        (2.5, 2.5),
        ('120/m', 2.0),
        ('7200/h', 2.0),
        ('0.5/s', 0.5),
    ],
)
def test_rate_reads_celerys_rate_strings(value, per_second):
    assert rate(value) == per_second


def test_backoff_is_celerys_exponential_interval():
    assert [backoff(1, r, 600, False) for r in range(5)] == [1, 2, 4, 8, 16]
    assert [backoff(3, r, 10, False) for r in range(4)] == [3, 6, 10, 10]
    for r in range(6):
        assert 0 <= backoff(2, r, 20, True) <= min(20, 2 * 2**r)


def test_the_token_bucket_gives_one_token_then_one_per_interval():
    bucket = TokenBucket(20.0)  # one token every 50 ms
    with bucket.lock:
        assert bucket.take()
        assert not bucket.take()
        wait = bucket.wait_time()
    assert 0.0 < wait <= 0.05
    deadline = time.monotonic() + 5
    while True:
        with bucket.lock:
            if bucket.take():
                break
        assert time.monotonic() < deadline


@pytest.mark.skipif(not AVAILABLE, reason='needs CPython')
def test_interruptible_raises_in_the_running_thread_and_not_after_it_ended():
    run = Interruptible()
    inside, caught = threading.Event(), []

    def task() -> None:
        with run.running():
            inside.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                pass

    def body() -> None:  # the worker's frame around the task's
        try:
            task()
        except SoftTimeLimitExceeded as exc:
            # (CPython 3.12+ may let an exception raised this way pass the innermost frame's
            # own handlers in a tight loop; the frame that called it always gets it.)
            caught.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    assert inside.wait(10)
    assert run.interrupt(SoftTimeLimitExceeded)
    thread.join(10)
    assert not thread.is_alive() and len(caught) == 1
    assert not run.interrupt(SoftTimeLimitExceeded)  # ended: nothing raised anywhere


class _Conf:
    """Settings with only what is given (as a Settings without ``task_acks_late`` would be)."""

    def __init__(self, **values: Any) -> None:
        self.task_ignore_result = False
        self.task_track_started = False
        self.__dict__.update(values)


class _App:
    def __init__(self, **conf: Any) -> None:
        self.conf = _Conf(**conf)


def _job(task: Any, ignore_result: Any = None) -> Any:
    from pika_rpc._jobs import Job
    from pika_rpc.protocol import TaskRequest

    request = TaskRequest(id='id-1', name='t.fun', args=[], kwargs={}, ignore_result=ignore_result)
    return Job(request, None, task)


def _outcomes(**conf: Any) -> Any:
    from pika_rpc._jobs import Outcomes

    return Outcomes(_App(**conf), 'w@h', lambda name: None, lambda: None, 'celery')


def test_acks_late_is_the_tasks_option_else_the_setting_where_there_is_one_else_true(app):
    from pika_rpc import states

    default, early = (
        decorate(app),
        App(broker='amqp://h//').task(name='t.early', acks_late=False)(lambda: None),
    )
    assert _outcomes().acks_late(_job(default)) is True  # pika_rpc's default
    assert _outcomes().acks_late(_job(early)) is False
    assert _outcomes(task_acks_late=False).acks_late(_job(default)) is False
    assert _outcomes(task_acks_late=False).acks_late(_job(early)) is False
    late = App(broker='amqp://h//').task(name='t.late', acks_late=True)(lambda: None)
    assert _outcomes(task_acks_late=False).acks_late(_job(late)) is True
    # store_errors_even_if_ignored: errors only, and only when the result is ignored
    keeps = App(broker='amqp://h//').task(
        name='t.keeps', ignore_result=True, store_errors_even_if_ignored=True
    )(lambda: None)
    quiet = App(broker='amqp://h//').task(name='t.quiet', ignore_result=True)(lambda: None)
    outcomes = _outcomes()
    assert outcomes.keeps(_job(keeps), states.FAILURE)
    assert outcomes.keeps(_job(keeps), states.RETRY)
    assert outcomes.keeps(_job(keeps), states.REVOKED)
    assert not outcomes.keeps(_job(keeps), states.SUCCESS)
    assert not outcomes.keeps(_job(keeps), states.STARTED)
    assert not outcomes.keeps(_job(quiet), states.FAILURE)
    assert _outcomes(task_store_errors_even_if_ignored=True).keeps(_job(quiet), states.FAILURE)
    assert outcomes.keeps(_job(default), states.SUCCESS)
