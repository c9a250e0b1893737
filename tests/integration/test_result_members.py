"""``AsyncResult``/``ResultSet``/``GroupResult`` members as Celery's, on real results."""

from __future__ import annotations

import datetime
import pickle
import uuid
from typing import Any

import pytest

from pika_rpc import App, AsyncResult, GroupResult, ResultSet
from pika_rpc.result import parse_date
from tests.integration.worker_support import app, delete_queue, start_worker  # noqa: F401

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0


class Boom(Exception):
    pass


def _tasks(app: App) -> Any:
    @app.task(name='members.add')
    def add(x, y=0):
        return x + y

    @app.task(name='members.fail')
    def fail():
        raise ValueError('nope')

    return add, fail


def test_date_done_is_an_aware_datetime_and_extended_fields_are_read(
    amqp_url: str, unique_name: str
) -> None:
    app = App(
        'members',
        broker=amqp_url,
        task_default_queue=unique_name,
        result_expires=300,
        result_extended=True,
    )
    add, _ = _tasks(app)
    from pika_rpc import Worker

    worker = Worker(app, hostname=f'w-{unique_name}@here')
    worker.start()
    try:
        before = datetime.datetime.now(datetime.timezone.utc)
        result = add.apply_async((2,), {'y': 3})
        assert not result.exists() or result.ready()
        assert result.get(timeout=WAIT) == 5
        done = result.date_done
        assert isinstance(done, datetime.datetime) and done.tzinfo is not None
        after = datetime.datetime.now(datetime.timezone.utc)
        assert before - datetime.timedelta(seconds=1) <= done <= after
        assert (result.name, result.args, result.kwargs) == ('members.add', [2], {'y': 3})
        assert (result.worker, result.retries, result.queue) == (
            f'w-{unique_name}@here',
            0,
            unique_name,
        )
        assert result.exists()
        assert result.as_list() == [result.id]
    finally:
        worker.stop(WAIT)
        app.close()
        delete_queue(amqp_url, unique_name)


def test_without_result_extended_the_extended_fields_are_none(app: App, start_worker) -> None:  # noqa: F811
    add, _ = _tasks(app)
    start_worker()
    result = add.delay(1, 1)
    assert result.get(timeout=WAIT) == 2
    assert (result.name, result.args, result.worker, result.queue) == (None,) * 4
    assert isinstance(result.date_done, datetime.datetime)


def test_a_task_never_sent_does_not_exist_and_has_no_date(app: App) -> None:
    ghost = app.AsyncResult(str(uuid.uuid4()))
    assert not ghost.exists() and ghost.date_done is None and ghost.state == 'PENDING'


def test_a_group_result_pickles_compares_and_joins_after_unpickling(
    app: App,
    start_worker,  # noqa: F811
) -> None:
    add, fail = _tasks(app)
    start_worker(concurrency=2)
    group = app.GroupResult(str(uuid.uuid4()), [add.delay(i, i) for i in range(3)])
    copy = pickle.loads(pickle.dumps(group))
    assert copy == group and copy is not group and str(copy) == group.id == copy
    assert hash(copy) == hash(group) and copy.children == group.results
    assert copy.join(timeout=WAIT) == [0, 2, 4]  # an unpickled result uses the current app
    assert group != app.GroupResult(group.id, group.results[:2])

    failed = fail.delay()
    members = app.ResultSet([*group.results, failed])
    with pytest.raises(ValueError, match='nope'):
        members.join(timeout=WAIT)
    with pytest.raises(ValueError, match='nope'):
        members.maybe_throw()
    members.maybe_throw(propagate=False)
    again = pickle.loads(pickle.dumps(members))
    assert again == members and again.completed_count() == 3


def test_result_set_members_as_celerys() -> None:
    a, b, c = (AsyncResult(str(uuid.uuid4())) for _ in range(3))
    members = ResultSet([a])
    members.update([a, b])
    assert members.results == [a, b]
    members.discard(c)  # not a member: nothing
    members.discard(a.id)  # by id
    assert members.results == [b]
    with pytest.raises(KeyError):
        members.remove(c)
    results = members.results
    members.clear()
    assert members.results == [] and results is members.results
    assert ResultSet([a, b]) == ResultSet([a, b]) != ResultSet([b, a])
    with pytest.raises(TypeError):
        hash(ResultSet([a]))
    assert not GroupResult() and GroupResult('g') == 'g'
    assert GroupResult('g', [a], parent=b) != GroupResult('g', [a])


def test_parse_date_reads_celerys_iso_text() -> None:
    aware = datetime.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc)
    assert parse_date(aware.isoformat()) == aware
    assert parse_date('2026-01-02T03:04:05.678000Z') == aware
    assert parse_date(None) is None and parse_date(aware) is aware
    with pytest.raises(ValueError):
        parse_date('yesterday')
