"""Celery's ``@app.task`` options, honoured by pika_rpc's Worker against the real broker.

Each option given to the decorator used to be passed on to ``send_task``, so ``.delay()``
raised ``TypeError``; now the client and the Worker honour them as Celery 5.7 does (the
Celery source each test follows is named in it). Timings are measured with
``time.monotonic()`` inside the tasks; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, List

import pika
import pytest

from pika_rpc import states
from pika_rpc.errors import SoftTimeLimitExceeded, TimeLimitExceeded
from tests.helpers import eventually, pika_parameters
from tests.integration.worker_support import app, gate, queue_depth, start_worker  # noqa: F401

WAIT = 20.0


def test_the_options_that_made_every_delay_raise_type_error_now_run(app, start_worker):
    @app.task(name='t.add', rate_limit='10/s', autoretry_for=(ValueError,), retry_backoff=True)
    def add(x, y):
        return x + y

    start_worker()
    assert add.delay(1, 2).get(timeout=WAIT) == 3


def test_autoretry_with_backoff_retries_with_celerys_countdowns_then_succeeds(app, start_worker):
    # celery.app.autoretry + celery.utils.time.get_exponential_backoff_interval:
    # countdown = min(retry_backoff_max, factor * 2 ** retries); no jitter here.
    runs: List[Any] = []

    @app.task(
        name='t.flaky',
        bind=True,
        autoretry_for=(ConnectionError,),
        retry_backoff=1,
        retry_jitter=False,
        max_retries=3,
    )
    def flaky(self):
        runs.append((time.monotonic(), self.request.retries))
        if len(runs) < 3:
            raise ConnectionError('try again')
        return 'done'

    start_worker()
    seen: List[Any] = []
    assert flaky.delay().get(timeout=WAIT, on_message=seen.append) == 'done'
    assert [r for _, r in runs] == [0, 1, 2]
    gaps = [b[0] - a[0] for a, b in zip(runs, runs[1:])]
    assert 0.9 <= gaps[0] < 1.9, gaps  # 1 * 2 ** 0
    assert 1.9 <= gaps[1] < 3.5, gaps  # 1 * 2 ** 1
    assert [m['status'] for m in seen] == ['RETRY', 'RETRY', 'SUCCESS']


def test_autoretry_stops_at_max_retries_with_the_original_exception(app, start_worker):
    runs: List[int] = []

    @app.task(
        name='t.always',
        bind=True,
        autoretry_for=(KeyError,),
        dont_autoretry_for=(),
        max_retries=2,
        retry_kwargs={'countdown': 0},
    )
    def always(self):
        runs.append(self.request.retries)
        raise KeyError('missing')

    @app.task(name='t.never', autoretry_for=(LookupError,), dont_autoretry_for=(IndexError,))
    def never():
        runs.append(-1)
        raise IndexError('not retried')

    start_worker()
    with pytest.raises(KeyError):
        always.delay().get(timeout=WAIT)
    assert runs == [0, 1, 2]
    with pytest.raises(IndexError):
        never.delay().get(timeout=WAIT)
    assert runs == [0, 1, 2, -1]


def test_rate_limit_spaces_the_starts_of_a_task_even_with_idle_threads(app, start_worker):
    starts: List[float] = []
    lock = threading.Lock()

    @app.task(name='t.limited', rate_limit='5/s')
    def limited(i):
        with lock:
            starts.append(time.monotonic())
        return i

    @app.task(name='t.free')
    def free(i):
        return i

    start_worker(concurrency=4)
    results = [limited.delay(i) for i in range(5)]
    assert [free.delay(i).get(timeout=WAIT) for i in range(3)] == [0, 1, 2]  # not held up
    assert [r.get(timeout=WAIT) for r in results] == list(range(5))
    starts.sort()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.1, gaps  # 0.2 s apart at 5/s; without the limit they start at once
    assert starts[-1] - starts[0] >= 0.7


def test_set_rate_limit_changes_the_limit_of_a_running_worker(app, start_worker):
    starts: List[float] = []

    @app.task(name='t.limited', rate_limit='1/h')
    def limited(i):
        starts.append(time.monotonic())
        return i

    worker = start_worker(concurrency=2)
    first = limited.delay(0)
    assert first.get(timeout=WAIT) == 0  # the bucket's one token
    second = limited.delay(1)
    eventually(lambda: worker.stats()['queued'] == 1)  # waits for a token (an hour)
    worker.set_rate_limit('t.limited', None)
    assert second.get(timeout=WAIT) == 1
    with pytest.raises(ValueError):
        worker.set_rate_limit('t.limited', 'often')


def test_ignore_result_stores_no_failure_unless_store_errors_even_if_ignored(app, start_worker):
    @app.task(name='t.add')
    def add(x, y):
        return x + y

    @app.task(name='t.quiet_fail', ignore_result=True)
    def quiet_fail():
        raise ValueError('not stored')

    @app.task(name='t.loud_fail', ignore_result=True, store_errors_even_if_ignored=True)
    def loud_fail():
        raise ValueError('stored')

    start_worker(concurrency=1)
    assert add.delay(1, 1).get(timeout=WAIT) == 2  # the reply queue exists
    quiet, loud = quiet_fail.delay(), loud_fail.delay()
    assert quiet.ignored and loud.ignored
    with pytest.raises(ValueError, match='stored'):
        app.AsyncResult(loud.id).get(timeout=WAIT)
    assert add.delay(2, 2).get(timeout=WAIT) == 4  # after both, in order, on one thread
    assert app.AsyncResult(quiet.id).state == states.PENDING


def test_throws_logs_an_expected_failure_at_info_without_traceback(app, start_worker, caplog):
    class Declined(Exception):
        pass

    @app.task(name='t.decline', throws=(Declined,))
    def decline():
        raise Declined('card declined')

    @app.task(name='t.crash')
    def crash():
        raise RuntimeError('bug')

    caplog.set_level('INFO', logger='pika_rpc')
    start_worker()
    with pytest.raises(Exception, match='card declined'):
        decline.delay().get(timeout=WAIT)
    with pytest.raises(RuntimeError):
        crash.delay().get(timeout=WAIT)
    expected = [r for r in caplog.records if 'raised expected' in r.getMessage()]
    unexpected = [r for r in caplog.records if 'raised unexpected' in r.getMessage()]
    assert len(expected) == 1 and expected[0].levelname == 'INFO'
    assert 'Traceback' not in expected[0].getMessage()
    assert len(unexpected) == 1 and unexpected[0].levelname == 'ERROR'
    assert 'Traceback' in unexpected[0].getMessage()


def test_track_started_option_gives_started_while_the_task_runs(app, start_worker, gate):
    @app.task(name='t.tracked', track_started=True)
    def tracked():
        gate.started.set()
        gate.release.wait(WAIT)
        return 'ok'

    start_worker()
    result = tracked.delay()
    assert gate.started.wait(WAIT)
    eventually(lambda: result.state == states.STARTED)
    gate.release.set()
    assert result.get(timeout=WAIT) == 'ok'


def test_the_task_serializer_is_used_on_the_wire_and_for_its_retry(
    app, start_worker, amqp_url, unique_name
):
    app.conf.accept_content = ['json', 'pickle']

    @app.task(name='t.pickled', bind=True, serializer='pickle', max_retries=1)
    def pickled(self, value):
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return sorted(value)

    pickled.apply_async(({3, 1, 2},), ignore_result=True)  # a set: json could not send it
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        method, props, _ = conn.channel().basic_get(unique_name, auto_ack=True)
    assert method is not None and props.content_type == 'application/x-python-serialize'
    start_worker()
    assert pickled.delay({3, 1, 2}).get(timeout=WAIT) == [1, 2, 3]


def test_retries_keep_the_tasks_custom_headers(app, start_worker):
    seen: List[Any] = []

    @app.task(name='t.traced', bind=True, max_retries=2)
    def traced(self):
        seen.append((self.request.retries, self.request.headers.get('trace_id')))
        if self.request.retries < 2:
            raise self.retry(countdown=0)
        return 'ok'

    start_worker()
    assert traced.apply_async(headers={'trace_id': 'abc-123'}).get(timeout=WAIT) == 'ok'
    assert seen == [(0, 'abc-123'), (1, 'abc-123'), (2, 'abc-123')]


def test_the_soft_time_limit_option_fails_a_task_that_does_not_catch_it(app, start_worker):
    @app.task(name='t.busy', soft_time_limit=0.5)
    def busy():
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:  # Python code: interrupted at once
            pass
        return 'not interrupted'

    start_worker()
    began = time.monotonic()
    with pytest.raises(SoftTimeLimitExceeded):
        busy.delay().get(timeout=WAIT)
    assert time.monotonic() - began < 5


def test_the_hard_time_limit_also_ends_the_abandoned_thread(app, start_worker):
    ended: List[BaseException] = []
    done = threading.Event()

    @app.task(name='t.stuck', time_limit=0.5)
    def stuck():
        try:
            while not done.wait(0.01):
                pass
        except BaseException as exc:
            ended.append(exc)
            raise
        finally:
            done.set()

    worker = start_worker(concurrency=1)
    with pytest.raises(TimeLimitExceeded):
        stuck.delay().get(timeout=WAIT)
    assert done.wait(WAIT)
    assert len(ended) == 1 and isinstance(ended[0], TimeLimitExceeded)
    eventually(lambda: worker.stats()['threads'] == 1)


def test_acks_on_failure_or_timeout_false_rejects_a_failed_task(app, start_worker, unique_name):
    @app.task(name='t.fail', acks_on_failure_or_timeout=False)
    def fail():
        raise ValueError('rejected')

    @app.task(name='t.add')
    def add(x, y):
        return x + y

    worker = start_worker(concurrency=1)
    with pytest.raises(ValueError):
        fail.delay().get(timeout=WAIT)
    assert add.delay(1, 1).get(timeout=WAIT) == 2
    assert worker.stats()['received'] == 2  # rejected without requeue: not delivered again


# ---------------------------------------------------------------- a worker process that dies
WORKER_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    import pika_rpc
    url, queue, acks_late = sys.argv[1], sys.argv[2], sys.argv[3] == 'late'
    app = pika_rpc.App(broker=url, task_default_queue=queue, result_expires=300)

    @app.task(name='t.lost', acks_late=acks_late, reject_on_worker_lost=True)
    def lost():
        print('started', flush=True)
        threading.Event().wait(120)

    pika_rpc.Worker(app).run()
    """
)


def run_until_task_starts(amqp_url: str, queue: str, mode: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.Popen(
        [sys.executable, '-c', WORKER_SCRIPT, amqp_url, queue, mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    line: List[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(WAIT)
    if line != ['started\n']:
        proc.kill()
        proc.wait(WAIT)
        pytest.fail(f'the worker process did not start the task: {line}')
    return proc


@pytest.mark.parametrize('mode', ['late', 'early'])
def test_a_worker_process_killed_mid_task_leaves_an_acks_late_message_for_another_worker(
    app, start_worker, amqp_url, unique_name, mode
):
    runs: List[str] = []

    @app.task(name='t.lost')
    def lost():
        runs.append('here')
        return 'second run'

    @app.task(name='t.add')
    def add(x, y):
        return x + y

    result = lost.delay()
    proc = run_until_task_starts(amqp_url, unique_name, mode)
    proc.kill()
    proc.wait(WAIT)
    if mode == 'late':  # unacked: the broker returns it when the process's connection dies
        eventually(lambda: queue_depth(amqp_url, unique_name) == 1, timeout=WAIT)
        start_worker(concurrency=1)
        assert result.get(timeout=WAIT) == 'second run'
        assert runs == ['here']
    else:  # acks_late=False: acked as it started, lost with the process (at most once)
        start_worker(concurrency=1)
        assert add.delay(1, 1).get(timeout=WAIT) == 2
        assert runs == [] and queue_depth(amqp_url, unique_name) == 0
