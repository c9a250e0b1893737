"""``_declarations.Declarations``: the control channel's commands and the declaration cache.

Pure logic, so the connection and its ``BlockingChannel`` are fakes recording what they are
asked; a refusal is what pika does then: the command raises ``ChannelClosedByBroker`` and
the channel is closed. The same against the real broker: tests/integration/test_link.py.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import pika.exceptions
import pytest

from pika_rpc._declarations import KINDS, Declarations

WAIT = 10.0

METHODS = {
    'declare_queue': 'queue_declare',
    'declare_exchange': 'exchange_declare',
    'bind_queue': 'queue_bind',
    'unbind_queue': 'queue_unbind',
    'bind_exchange': 'exchange_bind',
    'unbind_exchange': 'exchange_unbind',
    'delete_queue': 'queue_delete',
    'delete_exchange': 'exchange_delete',
    'purge_queue': 'queue_purge',
}


class FakeBlockingChannel:
    """Answers every command with ``result``; ``refuse`` makes the next one fail as the
    broker's Channel.Close does (the channel is closed after)."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.is_open = True
        self.calls: List[Tuple[str, Dict[str, Any]]] = []
        self.result: Any = None
        self.refuse: Optional[Tuple[int, str]] = None

    def __getattr__(self, name: str) -> Any:
        if name not in METHODS.values():
            raise AttributeError(name)

        def method(**kwargs: Any) -> Any:
            assert self.is_open, 'a command on a closed channel'
            self.calls.append((name, kwargs))
            if self.refuse is not None:
                self.is_open = False
                raise pika.exceptions.ChannelClosedByBroker(*self.refuse)
            return self.result

        return method


class FakeConnection:
    def __init__(self) -> None:
        self.channels: List[FakeBlockingChannel] = []

    def channel(self) -> FakeBlockingChannel:
        self.channels.append(FakeBlockingChannel(len(self.channels) + 1))
        return self.channels[-1]


def opened() -> Tuple[Declarations, FakeConnection]:
    declarations, connection = Declarations(), FakeConnection()
    declarations.open(connection)
    return declarations, connection


def counted(message_count: int) -> Any:
    """What ``queue_declare``/``queue_purge`` return: a frame with ``method.message_count``."""
    return SimpleNamespace(method=SimpleNamespace(message_count=message_count))


# ------------------------------------------------------------------ commands


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_each_kind_runs_its_blocking_channel_method_with_the_given_arguments(kind: str):
    declarations, connection = opened()
    declarations.run(connection, kind, {'queue': 'q', 'arguments': {'x-max-length': 1}})
    assert connection.channels[0].calls == [
        (METHODS[kind], {'queue': 'q', 'arguments': {'x-max-length': 1}})
    ]
    assert set(KINDS) == set(METHODS)


def test_a_command_remembers_its_key_on_success_only():
    declarations, connection = opened()
    channel = connection.channels[0]
    channel.refuse = (406, "PRECONDITION_FAILED - inequivalent arg 'durable'")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        declarations.command(connection, 'declare_queue', {'queue': 'q'}, ('queue', 'q'))
    assert not declarations.is_declared(('queue', 'q'))
    declarations.command(
        connection, 'declare_queue', {'queue': 'q', 'durable': True}, ('queue', 'q')
    )
    assert declarations.is_declared(('queue', 'q'))


def test_a_command_without_a_key_remembers_nothing():
    declarations, connection = opened()
    declarations.command(connection, 'declare_exchange', {'exchange': 'x'}, None)
    assert not declarations.is_declared(None) and not declarations.is_declared('x')


def test_a_refusal_closes_the_control_channel_and_the_next_command_opens_a_new_one():
    declarations, connection = opened()
    connection.channels[0].refuse = (404, "NOT_FOUND - no queue 'gone'")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        declarations.command(connection, 'purge_queue', {'queue': 'gone'}, None)
    declarations.command(connection, 'declare_queue', {'queue': 'q'}, ('queue', 'q'))
    assert len(connection.channels) == 2
    assert connection.channels[1].calls == [('queue_declare', {'queue': 'q'})]


def test_a_queue_declare_returns_its_message_count_or_none_and_a_purge_its_count_or_zero():
    declarations, connection = opened()
    channel = connection.channels[0]
    channel.result = counted(7)
    assert declarations.command(connection, 'declare_queue', {'queue': 'q'}, None) == 7
    assert declarations.command(connection, 'purge_queue', {'queue': 'q'}, None) == 7
    assert declarations.command(connection, 'bind_queue', {'queue': 'q'}, None) is None
    channel.result = None
    assert declarations.command(connection, 'declare_queue', {'queue': 'q'}, None) is None
    assert declarations.command(connection, 'purge_queue', {'queue': 'q'}, None) == 0


def test_a_new_connection_forgets_every_declaration_and_gets_its_own_control_channel():
    declarations, first = opened()
    declarations.command(first, 'declare_queue', {'queue': 'q'}, ('queue', 'q'))
    declarations.drop()  # the connection is gone
    second = FakeConnection()
    declarations.open(second)
    assert not declarations.is_declared(('queue', 'q'))
    declarations.command(second, 'declare_queue', {'queue': 'q'}, ('queue', 'q'))
    assert len(first.channels) == 1 and len(second.channels) == 1
    assert second.channels[0].calls == [('queue_declare', {'queue': 'q'})]


def test_a_dropped_control_channel_is_opened_again_by_the_next_command():
    declarations, connection = opened()
    declarations.drop()
    declarations.run(connection, 'delete_queue', {'queue': 'q'})
    assert len(connection.channels) == 2 and connection.channels[1].calls


# ------------------------------------------------------------------ the cache, any thread


def test_forget_forgets_one_key_and_forget_all_every_key():
    declarations, connection = opened()
    for name in ('a', 'b', 'c'):
        declarations.command(connection, 'declare_queue', {'queue': name}, ('queue', name))
    declarations.forget(('queue', 'b'))
    declarations.forget(('queue', 'never'))
    assert [declarations.is_declared(('queue', n)) for n in 'abc'] == [True, False, True]
    declarations.forget_all()
    assert not any(declarations.is_declared(('queue', n)) for n in 'abc')


def test_the_cache_answers_many_threads_while_the_io_thread_declares():
    callers, per_caller = 6, 100
    declarations, connection = opened()
    declared = [threading.Event() for _ in range(callers)]
    start = threading.Barrier(callers + 1, timeout=WAIT)
    errors: List[BaseException] = []

    def io_thread() -> None:  # declares every caller's keys, in turn
        try:
            start.wait()
            for k in range(per_caller):
                for n in range(callers):
                    declarations.command(
                        connection, 'declare_queue', {'queue': f'{n}-{k}'}, ('queue', f'{n}-{k}')
                    )
            for event in declared:
                event.set()
        except BaseException as exc:
            errors.append(exc)

    def caller(n: int) -> None:  # forgets its odd keys once declared
        try:
            start.wait()
            assert declared[n].wait(WAIT)
            for k in range(1, per_caller, 2):
                assert declarations.is_declared(('queue', f'{n}-{k}'))
                declarations.forget(('queue', f'{n}-{k}'))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=io_thread, daemon=True)]
    threads += [threading.Thread(target=caller, args=(n,), daemon=True) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads) and errors == []
    kept = {
        (n, k)
        for n in range(callers)
        for k in range(per_caller)
        if declarations.is_declared(('queue', f'{n}-{k}'))
    }
    assert kept == {(n, k) for n in range(callers) for k in range(0, per_caller, 2)}


def test_forget_all_from_another_thread_leaves_only_what_is_declared_after_it():
    declarations, connection = opened()
    declarations.command(connection, 'declare_queue', {'queue': 'before'}, ('queue', 'before'))
    forgetter = threading.Thread(target=declarations.forget_all, daemon=True)
    forgetter.start()
    forgetter.join(WAIT)
    assert not forgetter.is_alive()
    declarations.command(connection, 'declare_queue', {'queue': 'after'}, ('queue', 'after'))
    assert not declarations.is_declared(('queue', 'before'))
    assert declarations.is_declared(('queue', 'after'))


# ------------------------------------------------------------------ ensure_queue

ENSURE_STEPS = [
    ('declare_exchange', {'exchange': 'q', 'exchange_type': 'direct', 'durable': True}),
    ('declare_queue', {'queue': 'q', 'durable': True, 'arguments': {'x-queue-type': 'quorum'}}),
    ('bind_queue', {'queue': 'q', 'exchange': 'q', 'routing_key': 'q'}),
]


def test_ensure_queue_only_checks_a_queue_that_exists():
    declarations, connection = opened()
    declarations.run(connection, 'ensure_queue', {'queue': 'q', 'steps': ENSURE_STEPS})
    assert connection.channels[0].calls == [('queue_declare', {'queue': 'q', 'passive': True})]


def test_ensure_queue_declares_a_missing_queue_with_its_steps_on_a_new_channel():
    declarations, connection = opened()
    connection.channels[0].refuse = (404, "NOT_FOUND - no queue 'q' in vhost '/'")
    declarations.run(connection, 'ensure_queue', {'queue': 'q', 'steps': ENSURE_STEPS})
    assert connection.channels[0].calls == [('queue_declare', {'queue': 'q', 'passive': True})]
    assert connection.channels[1].calls == [(METHODS[k], kw) for k, kw in ENSURE_STEPS]


def test_ensure_queue_raises_any_other_refusal_and_declares_nothing():
    declarations, connection = opened()
    connection.channels[0].refuse = (403, 'ACCESS_REFUSED')
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        declarations.run(connection, 'ensure_queue', {'queue': 'q', 'steps': ENSURE_STEPS})
    assert len(connection.channels) == 1
