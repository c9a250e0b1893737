"""Fixtures of the fault tests: Apps through the fault proxy, and one straight to the broker."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional

import pika
import pytest

from pika_rpc import App
from tests.faultproxy import FaultProxy
from tests.helpers import FAST_RECONNECT, pika_parameters


@pytest.fixture
def make_app(amqp_url: str, unique_name: str) -> Iterator[Callable[..., App]]:
    """``make_app(url=None, **conf)``: an App (straight to the broker unless ``url``),
    closed afterwards, its task queue deleted."""
    made: List[App] = []

    def make(url: Optional[str] = None, **conf: Any) -> App:
        conf.setdefault('result_expires', 120)
        app = App(broker=url or amqp_url, task_default_queue=unique_name, **conf)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        channel = conn.channel()
        channel.queue_delete(unique_name)
        channel.exchange_delete(unique_name)


@pytest.fixture
def make_client(
    fault_proxy: FaultProxy, amqp_url: str, make_app: Callable[..., App]
) -> Iterator[Callable[..., App]]:
    """``make_client(url=None, **conf)``: an App through the proxy with fast reconnects; the
    proxy forwards again before the Apps close."""

    def make(url: Optional[str] = None, **conf: Any) -> App:
        conf.setdefault('broker_transport_options', FAST_RECONNECT)
        conf.setdefault('broker_connection_max_retries', 1000)
        return make_app(url or fault_proxy.url(amqp_url), **conf)

    yield make
    fault_proxy.refuse(False)
    fault_proxy.resume()


@pytest.fixture
def client(make_client: Callable[..., App]) -> App:
    return make_client()


@pytest.fixture
def worker(amqp_url: str) -> Iterator[App]:
    """Stores results straight to the broker, bypassing the proxy."""
    app = App(broker=amqp_url, result_expires=120)
    yield app
    app.close()


@pytest.fixture
def app(amqp_url: str, unique_name: str, raw_channel: Any) -> Iterator[App]:
    """An App straight to the broker; its task queue is deleted afterwards."""
    application = App(broker=amqp_url, task_default_queue=unique_name, result_expires=120)
    yield application
    application.close()
    raw_channel.queue_delete(unique_name)  # the task queue send_task declared
    raw_channel.exchange_delete(unique_name)
