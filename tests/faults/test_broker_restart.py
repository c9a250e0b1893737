"""What a fault proxy cannot fake: the broker itself restarting, and a broker memory alarm.

Every test here disturbs the whole broker (``disturbs_broker``: conftest runs them last) and
always puts it back in a ``finally`` (``start_app`` + ``await_startup``; the memory
watermark back to 0.4, this installation's default). Run them when nothing else uses the
broker: a stopped broker or a memory alarm hits every connection on it, not only ours.

What a restart keeps and what it loses (RabbitMQ 3.10, classic queues):

* the reply queue is durable, so it survives ``stop_app``/``start_app`` under the same oid;
* results are published transient (delivery mode 1, Celery's default,
  ``result_persistent=False``): a result stored before the restart and not yet consumed is
  dropped by the broker when the queue restarts. That is the documented price of transient
  results, not something the client can repair, so the tests store the results their
  waiters expect after ``start_app``. Waiters do not notice the restart: they keep waiting
  and get those results.

A memory alarm blocks every publishing connection: the broker stops reading from its socket,
so a publish is never confirmed. ``store_result(timeout=2)`` then raises ``PublishError`` at
its deadline instead of hanging. The publish itself is already in the socket, so once the
alarm clears the broker reads it and routes it: ``PublishError`` means "not confirmed in
time", not "not delivered" (publishing is at-least-once). pika's
``blocked_connection_timeout`` (30 s by default) tears a connection down when it stays
blocked that long; one test sets it to 1 s to check that the link then reconnects, the
store still fails at its own deadline, and everything works once the alarm clears.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import pytest

from pika_rpc import App
from pika_rpc._link import Link
from pika_rpc.errors import PublishError
from tests.helpers import LinkEvents, eventually, list_queues, rabbitmqctl

pytestmark = [pytest.mark.disturbs_broker, pytest.mark.slow]

WAIT = 30.0
#: A restart takes seconds to tens of seconds: waiters and reconnects outlast a few minutes.
RESTART_WAIT = 240.0
#: Reconnect at once, then every 0.2 s more, at most every 1 s: 300 retries outlast 4 minutes.
RESTART_RECONNECT = {'interval_start': 0, 'interval_step': 0.2, 'interval_max': 1}
RESTART_RETRIES = 300
#: This installation's default (``rabbitmqctl status``: vm_memory_high_watermark_setting).
DEFAULT_WATERMARK = '0.4'


def reply(app: App, task_id: str) -> Dict[str, str]:
    return {'id': task_id, 'reply_to': app.backend.oid, 'correlation_id': task_id}


def all_waiting(app: App, results: List[Any]) -> bool:
    slots = app.backend._pending._slots
    return all(r.id in slots and slots[r.id].waiters for r in results)


class Waiters:
    """One thread per result in ``result.get(timeout)``; records values and errors."""

    def __init__(self, results: List[Any], timeout: float) -> None:
        self.values: Dict[str, Any] = {}
        self.errors: Dict[str, BaseException] = {}
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(len(results) + 1)
        self._threads = [threading.Thread(target=self._wait, args=(r, timeout)) for r in results]
        for t in self._threads:
            t.start()
        self._barrier.wait(WAIT)

    def _wait(self, result: Any, timeout: float) -> None:
        self._barrier.wait(WAIT)
        try:
            value = result.get(timeout=timeout)
        except BaseException as exc:  # recorded: the test asserts on it
            with self._lock:
                self.errors[result.id] = exc
        else:
            with self._lock:
                self.values[result.id] = value

    @property
    def done(self) -> int:
        with self._lock:
            return len(self.values) + len(self.errors)

    def join(self, timeout: float) -> None:
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), 'a waiter hangs'


class InThread:
    """Run ``fn()`` in a thread; ``join()`` returns its value or raises its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(fn,))
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # handed to join()
            self._error = exc

    def join(self, timeout: float) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), 'still running'
        if self._error is not None:
            raise self._error
        return self._value


def broker_alarms() -> List[Any]:
    return json.loads(rabbitmqctl('status', '--formatter', 'json'))['alarms']


def connection_state(link: Link) -> Optional[str]:
    """Our connection's state as the broker sees it ('running', 'blocking', 'blocked').

    Found by its ``connection_name`` client property (the link's name)."""
    rows = json.loads(
        rabbitmqctl('list_connections', 'client_properties', 'state', '--formatter', 'json') or '[]'
    )
    for row in rows:
        properties = {item[0]: item[-1] for item in row.get('client_properties') or ()}
        if properties.get('connection_name') == link.name:
            return row['state']
    return None


# ------------------------------------------------------------------ restart


@pytest.mark.timeout(600)
def test_waiters_keep_waiting_through_a_broker_restart_and_tasks_work_afterwards_by_themselves(
    make_app: Callable[..., App],
) -> None:
    app = make_app(
        broker_transport_options=RESTART_RECONNECT, broker_connection_max_retries=RESTART_RETRIES
    )
    results = [app.send_task('tasks.add', (i, i)) for i in range(5)]
    backend = app.backend
    oid, link = backend.oid, backend._get_link()
    events = LinkEvents(link)
    waiters = Waiters(results, timeout=RESTART_WAIT)
    assert eventually(lambda: all_waiting(app, results), timeout=WAIT)
    sender: Optional[InThread] = None
    try:
        rabbitmqctl('stop_app', timeout=RESTART_WAIT)
        assert events.wait('lost')
        # Sent while the broker is down: blocks until the link is back, then goes out.
        sender = InThread(lambda: app.send_task('tasks.add', (9, 9), timeout=RESTART_WAIT))
        assert link.state == 'RECONNECTING' and waiters.done == 0
    finally:
        rabbitmqctl('start_app', timeout=RESTART_WAIT)
        rabbitmqctl('await_startup', timeout=RESTART_WAIT)
    assert events.wait('connected', timeout=RESTART_WAIT)
    assert events.count('gave_up') == 0 and waiters.done == 0
    sent_during = sender.join(RESTART_WAIT)

    for i, result in enumerate(results):
        backend.mark_as_done(result.id, i * 2, request=reply(app, result.id))
    waiters.join(RESTART_WAIT)
    assert waiters.errors == {}
    assert waiters.values == {r.id: i * 2 for i, r in enumerate(results)}

    backend.mark_as_done(sent_during.id, 18, request=reply(app, sent_during.id))
    assert sent_during.get(timeout=WAIT) == 18
    after = app.send_task('tasks.add', (10, 10))
    backend.mark_as_done(after.id, 20, request=reply(app, after.id))
    assert after.get(timeout=WAIT) == 20

    assert app.backend is backend and backend.oid == oid
    assert oid in list_queues()  # the durable reply queue survived
    assert backend.stats()['reconnects'] >= 1 and link.state == 'OPEN'


# ------------------------------------------------------------------ memory alarm


class MemoryAlarm:
    """``with MemoryAlarm():`` the broker is in a memory alarm; afterwards it is not."""

    def __enter__(self) -> 'MemoryAlarm':
        try:
            rabbitmqctl('set_vm_memory_high_watermark', '0')
            eventually(
                lambda: any('memory' in json.dumps(a) for a in broker_alarms()), timeout=WAIT
            )
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        rabbitmqctl('set_vm_memory_high_watermark', DEFAULT_WATERMARK)
        eventually(lambda: broker_alarms() == [], timeout=WAIT)


@pytest.mark.timeout(120)
@pytest.mark.parametrize('blocked_timeout', [None, 1.0], ids=['default', 'one_second'])
def test_store_result_during_a_memory_alarm_raises_publish_error_at_its_deadline_and_works_after(
    blocked_timeout: Optional[float], make_app: Callable[..., App]
) -> None:
    conf = {} if blocked_timeout is None else {'blocked_connection_timeout': blocked_timeout}
    app = make_app(
        broker_transport_options={'interval_start': 0, 'interval_step': 0.1, 'interval_max': 0.5},
        **conf,
    )
    backend = app.backend
    blocked, later = app.send_task('tasks.add', (1, 1)), app.send_task('tasks.add', (2, 2))
    link = backend._get_link()
    events = LinkEvents(link)
    with MemoryAlarm():
        started = time.monotonic()
        with pytest.raises(PublishError) as raised:
            backend.store_result(
                blocked.id,
                'stored in the alarm',
                'SUCCESS',
                request=reply(app, blocked.id),
                timeout=2,
            )
        failed_after = time.monotonic() - started
        if blocked_timeout is None:
            assert connection_state(link) == 'blocked'  # by the broker, not torn down
            assert events.count('lost') == 0
        else:
            assert events.wait('lost')  # pika gave up on the blocked socket
    assert 'not confirmed within 2 s' in str(raised.value)  # names its own deadline
    backend.mark_as_done(later.id, 4, request=reply(app, later.id))
    assert later.get(timeout=WAIT) == 4
    assert link.state == 'OPEN' and events.count('gave_up') == 0
    if blocked_timeout is None:
        # Its bytes were in the socket: read and routed once the alarm cleared, ahead of
        # 'later' on the same channel. PublishError said "not confirmed", not "not sent".
        assert backend.get_task_meta(blocked.id)['result'] == 'stored in the alarm'
    print(
        f'\nblocked_connection_timeout={blocked_timeout}: PublishError after '
        f'{failed_after:.2f} s ({raised.value}); reconnects {backend.stats()["reconnects"]}; '
        f'result stored in the alarm delivered afterwards: '
        f'{backend.get_task_meta(blocked.id)["status"]}'
    )
