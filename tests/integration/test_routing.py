"""Routing: pika_rpc's client sends each task where Celery 5.7's own client sends it.

Each case configures a Celery app and a pika_rpc App alike, sends the same task with both
to the real broker and reads where each message arrived (queue, exchange, routing key).
"""

from __future__ import annotations

import types
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pika
import pytest

from pika_rpc import App, Exchange, Queue, QueueNotFound, Worker
from tests.helpers import pika_parameters

celery = pytest.importorskip('celery')
kombu = pytest.importorskip('kombu')

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0


class Names:
    """Unique queue/exchange names for one test, deleted afterwards."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.made: List[str] = []

    def __call__(self, suffix: str) -> str:
        self.made.append(f'{self.base}-{suffix}')
        return self.made[-1]


@pytest.fixture
def names(amqp_url: str, unique_name: str) -> Iterator[Names]:
    made = Names(unique_name)
    yield made
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        for name in made.made:
            for delete in ('queue_delete', 'exchange_delete'):
                channel = conn.channel()
                try:
                    getattr(channel, delete)(name)
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:
                    pass


def _kombu_queues(queues: List[Queue]) -> List[Any]:
    out = []
    for q in queues:
        ex = q.exchange
        exchange = kombu.Exchange(ex.name, type=ex.type) if ex is not None and ex.name else None
        out.append(
            kombu.Queue(
                q.name,
                exchange,
                routing_key=q.routing_key or None,
                queue_arguments=q.queue_arguments,
            )
        )
    return out


def _get(amqp_url: str, queue: str) -> Optional[Tuple[str, str, str, Any]]:
    """(exchange, routing key, task id, priority) of the next message of ``queue``, or None."""
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        method, props, _ = conn.channel().basic_get(queue, auto_ack=True)
    if method is None:
        return None
    return method.exchange, method.routing_key, props.headers['id'], props.priority


def _both(
    amqp_url: str, conf: Dict[str, Any], name: str, **options: Any
) -> Tuple[Optional[str], Optional[str]]:
    """Send ``name`` with Celery's client and with pika_rpc's; return both task ids."""
    celery_conf = dict(conf)
    if 'task_queues' in celery_conf:
        celery_conf['task_queues'] = _kombu_queues(celery_conf['task_queues'])
    capp = celery.Celery('routing', broker=amqp_url, set_as_current=False)
    capp.conf.update(celery_conf, result_backend=None, broker_connection_retry_on_startup=False)
    papp = App('routing', broker=amqp_url, **conf)
    try:
        cid = capp.send_task(name, (1,), **options).id
        pid = papp.send_task(name, (1,), ignore_result=True, **options).id
    finally:
        papp.close()
        capp.close()
    return cid, pid


def _arrivals(
    amqp_url: str, queue: str, ids: Tuple[Optional[str], Optional[str]], size: int = 2
) -> List[Any]:
    got = [_get(amqp_url, queue), _get(amqp_url, queue)]
    assert _get(amqp_url, queue) is None
    assert sorted(g[2] for g in got if g) == sorted(ids), f'{queue}: {got}'
    return [g[:2] + g[3:size] for g in got if g]


def test_a_mapping_route_sends_to_its_queue_and_others_to_the_default_queue(amqp_url, names):
    default, slow = names('default'), names('slow')
    conf = {'task_default_queue': default, 'task_routes': {'t.slow': {'queue': slow}}}
    ids = _both(amqp_url, conf, 't.slow')
    assert _arrivals(amqp_url, slow, ids) == [('', slow)] * 2
    ids = _both(amqp_url, conf, 't.fast')
    assert _arrivals(amqp_url, default, ids) == [('', default)] * 2


def test_a_glob_route_given_as_a_queue_name_and_a_list_of_routers(amqp_url, names):
    default, reports = names('default'), names('reports')
    conf = {
        'task_default_queue': default,
        'task_routes': [{'nothing.*': 'nowhere'}, {'reports.*': reports}],
    }
    ids = _both(amqp_url, conf, 'reports.monthly')
    assert _arrivals(amqp_url, reports, ids) == [('', reports)] * 2


def _route_big(name, args, kwargs, options, task=None, **kw):
    if name == 't.resize' and args and args[0] < 10:
        return {'queue': _route_big.queue}
    return None


def test_a_router_function_decides_and_the_call_options_win_over_a_route(amqp_url, names):
    default, images, urgent = names('default'), names('images'), names('urgent')
    _route_big.queue = images
    conf = {'task_default_queue': default, 'task_routes': (_route_big,)}
    ids = _both(amqp_url, conf, 't.resize')
    assert _arrivals(amqp_url, images, ids) == [('', images)] * 2
    ids = _both(amqp_url, conf, 't.resize', queue=urgent)
    assert _arrivals(amqp_url, urgent, ids) == [('', urgent)] * 2


def test_a_topic_queue_of_task_queues_gets_its_exchange_and_routing_key(amqp_url, names):
    default, jobs, topic = names('default'), names('jobs'), names('topic')
    conf = {
        'task_default_queue': default,
        'task_queues': [Queue(jobs, Exchange(topic, type='topic'), routing_key='jobs.#')],
        'task_routes': {'t.job': {'queue': jobs, 'routing_key': 'jobs.resize'}},
    }
    ids = _both(amqp_url, conf, 't.job')
    assert _arrivals(amqp_url, jobs, ids) == [(topic, 'jobs.resize')] * 2


def test_the_default_exchange_and_routing_key_of_a_topic_default_exchange(amqp_url, names):
    default, topic = names('default'), names('dtopic')
    conf = {
        'task_default_queue': default,
        'task_default_exchange': topic,
        'task_default_exchange_type': 'topic',
        'task_default_routing_key': 'task.default',
    }
    ids = _both(amqp_url, conf, 't.any')
    assert _arrivals(amqp_url, default, ids) == [(topic, 'task.default')] * 2


def test_no_missing_queues_refuses_an_unknown_queue_as_celery_does(amqp_url, names):
    default = names('default')
    conf = {'task_default_queue': default, 'task_create_missing_queues': False}
    capp = celery.Celery('routing', broker=amqp_url, set_as_current=False)
    capp.conf.update(conf)
    with pytest.raises(celery.exceptions.QueueNotFound):
        capp.send_task('t.x', queue=names('unknown'))
    capp.close()
    with App('routing', broker=amqp_url, **conf) as app:
        with pytest.raises(QueueNotFound, match='missing from task_queues') as caught:
            app.send_task('t.x', queue=names('unknown2'))
        assert isinstance(caught.value, KeyError)
        with pytest.raises(QueueNotFound):
            Worker(app, queues=[names('unknown3')])


def test_celery_task_routes_from_django_settings_route_delay(amqp_url, names):
    default, slow = names('default'), names('slow')
    django = types.SimpleNamespace(
        CELERY_BROKER_URL=amqp_url,
        CELERY_TASK_DEFAULT_QUEUE=default,
        CELERY_TASK_ROUTES={'proj.*': {'queue': slow}},
        CELERY_RESULT_EXPIRES=300,
    )
    app = App('proj')
    app.config_from_object(django, namespace='CELERY')

    @app.task(name='proj.add')
    def add(x, y):
        return x + y

    worker = Worker(app, queues=[slow])
    worker.start()
    try:
        assert add.delay(2, 3).get(timeout=WAIT) == 5
    finally:
        worker.stop(WAIT)
        app.close()


def test_a_worker_given_no_queues_consumes_every_queue_of_task_queues(amqp_url, names):
    default, a, b, topic = names('default'), names('a'), names('b'), names('topic')
    app = App(
        'proj',
        broker=amqp_url,
        result_expires=300,
        task_default_queue=default,
        task_queues=[Queue(a), Queue(b, Exchange(topic, type='topic'), routing_key='b.#')],
        task_routes={'t.a': a, 't.b': {'queue': b, 'routing_key': 'b.x'}},
    )

    @app.task(name='t.a')
    def task_a():
        return 'a'

    @app.task(name='t.b')
    def task_b():
        return 'b'

    worker = Worker(app)
    assert [q.name for q in worker.queues] == [a, b]
    worker.start()
    try:
        assert (task_a.delay().get(timeout=WAIT), task_b.delay().get(timeout=WAIT)) == ('a', 'b')
    finally:
        worker.stop(WAIT)
        app.close()


def test_a_routes_priority_is_the_messages_as_in_celery(amqp_url, names):
    default, ranked = names('default'), names('ranked')
    conf = {
        'task_default_queue': default,
        'task_queues': [Queue(ranked, queue_arguments={'x-max-priority': 10})],
        'task_routes': {'t.p': {'queue': ranked, 'priority': 7}},
    }
    ids = _both(amqp_url, conf, 't.p')
    assert _arrivals(amqp_url, ranked, ids, size=4) == [('', ranked, 7)] * 2


def test_a_queue_object_given_to_send_task_is_declared_as_given(amqp_url, names):
    topic, given = names('topic'), names('given')
    queue = Queue(given, Exchange(topic, type='topic'), routing_key='g.#')
    with App('routing', broker=amqp_url, task_default_queue=names('default')) as app:
        sent = app.send_task('t.q', queue=queue, routing_key='g.1', ignore_result=True)
    assert _get(amqp_url, given)[:3] == (topic, 'g.1', sent.id)


def test_a_route_key_pika_rpc_does_not_use_is_warned_about_once(amqp_url, names, caplog):
    default = names('default')
    conf = {'task_default_queue': default, 'task_routes': {'t.*': {'queue': default, 'x': 1}}}
    with App('routing', broker=amqp_url, **conf) as app, caplog.at_level('WARNING'):
        app.send_task('t.a', ignore_result=True)
        app.send_task('t.b', ignore_result=True)
    warned = [r.getMessage() for r in caplog.records if "route option 'x'" in r.getMessage()]
    assert len(warned) == 1


def test_send_task_passes_amqp_properties_on_and_refuses_other_names(amqp_url, names):
    queue = names('props')
    with App('routing', broker=amqp_url, task_default_queue=queue) as app:
        app.send_task('t.p', app_id='1234', type='t', ignore_result=True)
        with pytest.raises(TypeError, match='unexpected keyword argument .bogus.'):
            app.send_task('t.p', bogus=1)
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        _, props, _ = conn.channel().basic_get(queue, auto_ack=True)
    assert (props.app_id, props.type) == ('1234', 't')
