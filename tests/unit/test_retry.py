"""pika_rpc._retry: kombu's retry policy with a deadline and a stop Event. Never sleeps."""

from __future__ import annotations

import ast
import itertools
import logging
import threading
from pathlib import Path

import pytest

from pika_rpc import _retry
from pika_rpc._retry import intervals, never_retried, retry_over_time
from pika_rpc._timeouts import deadline
from pika_rpc.errors import NotSupportedByRabbitMQ, PreconditionFailed


class Boom(Exception):
    pass


class ClosedByBroker(Exception):
    """Shaped like pika's ChannelClosedByBroker: carries a reply_code."""

    def __init__(self, reply_code):
        super().__init__(reply_code, 'text')
        self.reply_code = reply_code


class FakeStop(threading.Event):
    """A stop Event whose wait() records the interval and returns at once."""

    def __init__(self):
        super().__init__()
        self.waits = []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return self.is_set()


class Flaky:
    """Fails `failures` times (with `error`), then returns 'ok'."""

    def __init__(self, failures, error=Boom):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error() if isinstance(self.error, type) else self.error
        return 'ok'


def _policy(**kw):
    return dict(dict(max_retries=None, interval_start=0, interval_step=0, interval_max=0), **kw)


# ------------------------------------------------------------------ intervals


def _first(n, **policy):
    return list(itertools.islice(intervals(policy), n))


def test_intervals_for_the_rpc_backend_policy():
    assert _first(4, interval_start=0, interval_step=1, interval_max=1) == [0, 1, 1, 1]


def test_intervals_for_celerys_publish_policy_keep_kombus_float_sums():
    assert _first(8, interval_start=0, interval_step=0.2, interval_max=1) == [
        0.0,
        0.2,
        0.4,
        0.6000000000000001,
        0.8,
        1.0,
        1.0,
        1.0,
    ]


def test_intervals_are_capped_at_interval_max_as_kombu_5_7():
    seq = _first(17, interval_start=2, interval_step=2, interval_max=30)
    assert seq[:3] == [2, 4, 6] and seq[13:] == [28, 30, 30, 30]


def test_intervals_with_a_start_above_the_max_stay_at_the_max():
    assert _first(3, interval_start=3, interval_step=0.7, interval_max=2.5) == [2.5] * 3


def test_intervals_with_step_zero_repeat_the_start():
    assert _first(3, interval_start=0.5, interval_step=0, interval_max=1) == [0.5] * 3


def test_intervals_repeat_kombus_last_value_when_float_sums_overshoot():
    # 0.1 + 0.1 + 0.1 > 0.3 in floats, so kombu never reaches the max here.
    assert _first(5, interval_start=0, interval_step=0.1, interval_max=0.3) == [
        0.0,
        0.1,
        0.2,
        0.20000000000000004,
        0.20000000000000004,
    ]


def test_intervals_default_to_the_rpc_backend_policy():
    assert list(itertools.islice(intervals(), 3)) == [0, 1, 1]


def test_intervals_refuse_a_negative_value():
    with pytest.raises(ValueError, match='interval_step'):
        intervals({'interval_step': -1})


# ------------------------------------------------------------ retry_over_time


def test_returns_the_value_of_the_first_successful_call():
    fn = Flaky(2)
    assert retry_over_time(fn, Boom, FakeStop(), None, **_policy(max_retries=5)) == 'ok'
    assert fn.calls == 3


def test_max_retries_zero_calls_once_and_reraises():
    fn, errback_calls = Flaky(10), []
    with pytest.raises(Boom):
        retry_over_time(
            fn,
            Boom,
            FakeStop(),
            None,
            **_policy(max_retries=0, errback=lambda e, i: errback_calls.append(i)),
        )
    assert fn.calls == 1 and errback_calls == []


def test_max_retries_three_calls_at_most_four_times():
    fn = Flaky(10)
    with pytest.raises(Boom):
        retry_over_time(fn, Boom, FakeStop(), None, **_policy(max_retries=3))
    assert fn.calls == 4


def test_the_last_error_is_reraised():
    errors = iter([Boom('first'), Boom('second'), Boom('last')])

    def fn():
        raise next(errors)

    with pytest.raises(Boom, match='last'):
        retry_over_time(fn, Boom, FakeStop(), None, **_policy(max_retries=2))


def test_errback_gets_exc_and_each_interval_of_kombus_sequence():
    fn, seen, stop = Flaky(10), [], FakeStop()
    with pytest.raises(Boom):
        retry_over_time(
            fn,
            Boom,
            stop,
            None,
            max_retries=6,
            interval_start=0,
            interval_step=0.2,
            interval_max=1,
            errback=lambda exc, interval: seen.append((type(exc), interval)),
        )
    expected = [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
    assert seen == [(Boom, i) for i in expected]
    assert stop.waits == expected  # each wait is the errback's interval


def test_max_retries_none_retries_until_success_without_deadline():
    fn = Flaky(50)
    assert retry_over_time(fn, Boom, FakeStop(), None, **_policy()) == 'ok'
    assert fn.calls == 51


def test_errors_not_caught_propagate_at_once():
    fn = Flaky(5, error=KeyError)
    with pytest.raises(KeyError):
        retry_over_time(fn, Boom, FakeStop(), None, **_policy(max_retries=5))
    assert fn.calls == 1


def test_catch_may_be_a_tuple():
    fn = Flaky(1, error=KeyError)
    assert retry_over_time(fn, (Boom, KeyError), FakeStop(), None, **_policy(max_retries=1)) == 'ok'


def test_stop_set_from_the_errback_stops_after_that_wait():
    stop, fn = FakeStop(), Flaky(10)
    with pytest.raises(Boom):
        retry_over_time(
            fn, Boom, stop, None, **_policy(max_retries=10, errback=lambda e, i: stop.set())
        )
    assert fn.calls == 1 and len(stop.waits) == 1


def test_stop_already_set_gives_up_without_errback_or_wait():
    stop, fn, seen = FakeStop(), Flaky(10), []
    stop.set()
    with pytest.raises(Boom):
        retry_over_time(
            fn, Boom, stop, None, **_policy(max_retries=10, errback=lambda e, i: seen.append(i))
        )
    assert fn.calls == 1 and seen == [] and stop.waits == []


def test_real_event_set_from_another_thread_cuts_a_long_wait_short():
    stop, entered = threading.Event(), threading.Event()
    outcome = []

    def run():
        try:
            retry_over_time(
                Flaky(10),
                Boom,
                stop,
                None,
                max_retries=None,
                interval_start=3600,
                interval_step=0,
                interval_max=3600,
                errback=lambda e, i: entered.set(),
            )
        except Boom as exc:
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert entered.wait(10)
    stop.set()
    t.join(10)
    assert not t.is_alive() and len(outcome) == 1


def test_deadline_shorter_than_the_next_interval_gives_up():
    fn, stop, seen = Flaky(10), FakeStop(), []
    with pytest.raises(Boom):
        retry_over_time(
            fn,
            Boom,
            stop,
            deadline(30),
            max_retries=None,
            interval_start=60,
            interval_step=0,
            interval_max=60,
            errback=lambda e, i: seen.append(i),
        )
    assert fn.calls == 1 and seen == [] and stop.waits == []


def test_deadline_stops_retries_after_the_intervals_run_past_it():
    fn, stop = Flaky(100), FakeStop()
    with pytest.raises(Boom):  # waits 0, 10, 20 fit; 30 would not
        retry_over_time(
            fn,
            Boom,
            stop,
            deadline(25),
            max_retries=None,
            interval_start=0,
            interval_step=10,
            interval_max=30,
        )
    assert stop.waits == [0, 10, 20] and fn.calls == 4


def test_expired_deadline_gives_up_even_with_zero_intervals():
    fn = Flaky(10)
    with pytest.raises(Boom):
        retry_over_time(fn, Boom, FakeStop(), deadline(0), **_policy())
    assert fn.calls == 1


def test_is_fatal_error_is_not_retried():
    fn = Flaky(10)
    with pytest.raises(Boom):
        retry_over_time(
            fn, Boom, FakeStop(), None, **_policy(max_retries=10), is_fatal=lambda exc: True
        )
    assert fn.calls == 1


@pytest.mark.parametrize(
    'error',
    [
        PreconditionFailed('x'),
        NotSupportedByRabbitMQ('x'),
        ClosedByBroker(403),
        ClosedByBroker(406),
        ClosedByBroker(540),
    ],
)
def test_never_retried_errors_are_raised_at_once(error):
    fn = Flaky(10, error=error)
    with pytest.raises(type(error)):
        retry_over_time(fn, Exception, FakeStop(), None, **_policy(max_retries=10))
    assert fn.calls == 1


def test_a_translated_error_whose_cause_is_fatal_is_not_retried():
    cause = ClosedByBroker(406)
    try:
        raise Boom('declare failed') from cause
    except Boom as exc:
        assert never_retried(exc)


@pytest.mark.parametrize('code', [404, 320, 501, None])
def test_other_reply_codes_are_retried(code):
    assert not never_retried(ClosedByBroker(code))
    fn = Flaky(1, error=ClosedByBroker(code))
    assert retry_over_time(fn, Exception, FakeStop(), None, **_policy(max_retries=1)) == 'ok'


def test_is_fatal_adds_to_the_built_in_rules():
    fn = Flaky(10, error=ClosedByBroker(406))
    with pytest.raises(ClosedByBroker):
        retry_over_time(
            fn, Exception, FakeStop(), None, **_policy(max_retries=10), is_fatal=lambda exc: False
        )
    assert fn.calls == 1


def test_a_raising_errback_is_logged_and_retrying_goes_on(caplog):
    fn = Flaky(3)

    def errback(exc, interval):
        raise RuntimeError('errback broke')

    with caplog.at_level(logging.ERROR, logger='pika_rpc._retry'):
        assert (
            retry_over_time(fn, Boom, FakeStop(), None, **_policy(max_retries=5, errback=errback))
            == 'ok'
        )
    assert fn.calls == 4
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3 and 'errback broke' in caplog.text


def test_default_errback_logs_a_warning_with_the_interval(caplog):
    with caplog.at_level(logging.WARNING, logger='pika_rpc._retry'):
        retry_over_time(
            Flaky(1, error=Boom('nope')),
            Boom,
            FakeStop(),
            None,
            max_retries=1,
            interval_start=0.5,
            interval_step=0,
            interval_max=1,
        )
    assert 'retry in 0.5 s' in caplog.text and 'nope' in caplog.text
    assert caplog.records[0].levelno == logging.WARNING


def test_stop_none_is_accepted():
    assert retry_over_time(Flaky(1), Boom, None, None, **_policy(max_retries=1)) == 'ok'


@pytest.mark.parametrize('bad', [-1, 1.5, True, '3'])
def test_bad_max_retries_is_a_value_error(bad):
    with pytest.raises(ValueError, match='max_retries'):
        retry_over_time(Flaky(0), Boom, FakeStop(), None, max_retries=bad)


def test_negative_interval_is_a_value_error():
    with pytest.raises(ValueError, match='interval_start'):
        retry_over_time(Flaky(0), Boom, FakeStop(), None, max_retries=1, interval_start=-1)


def test_retry_imports_only_level_0_modules():
    tree = ast.parse(Path(_retry.__file__).read_text())
    local = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(a.name.split('.')[0] == 'pika' for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            name = '.' * node.level + (node.module or '')
            assert not name.startswith('pika') or name.startswith('pika_rpc')
            if node.level or name.startswith('pika_rpc'):
                local.add(name)
    assert local <= {'.errors', '.states', '._timeouts'}
