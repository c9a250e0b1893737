"""Task routing as Celery does it: ``task_routes`` picks a task's queue, exchange and key.

``Router(conf).route(options, name, args, kwargs, task)`` is Celery's ``Router.route``
(``celery/app/routes.py``): the options of the call win over the route's, a route may be
a mapping of task name (or glob pattern, or compiled regex) to a queue name or a dict, a
router callable ``router(name, args, kwargs, options, task=task)``, an object with Celery's
pre-4.0 ``route_for_task(name, args, kwargs)``, an import path of either, or a list of
these (the first route that answers wins); a task no route names goes to
``task_default_queue``. A queue name becomes its ``Queue``: ours (``_taskqueues``) as
configured, any other created if missing, unless ``task_create_missing_queues`` is False:
then ``QueueNotFound`` (a ``KeyError``), as Celery.

``destination(conf, options)`` is where Celery's ``send_task_message`` publishes: a queue
on a *direct* exchange is reached through the default exchange by its name unless both an
exchange and a routing key were given; otherwise the queue's exchange (or
``task_default_exchange``) with the given routing key, else the queue's binding key, else
``task_default_routing_key``.

Level 7: pure, builds on ``_taskqueues``; no I/O.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import re
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _taskqueues
from .entities import Exchange, Queue

__all__ = ['Router', 'MapRoute', 'prepare', 'destination', 'ROUTE_KEYS']

LOGGER = logging.getLogger(__name__)

#: The keys of a route (or of the call's options) that decide where a task goes.
ROUTE_KEYS = (
    'queue',
    'exchange',
    'routing_key',
    'exchange_type',
    'priority',
    'serializer',
    'defaulted',
)


class MapRoute:
    """A route from a mapping (Celery's): exact names first, then patterns in order."""

    def __init__(self, mapping: Any) -> None:
        items = mapping.items() if isinstance(mapping, Mapping) else mapping
        self.map: Dict[str, Any] = {}
        self.patterns: List[Tuple[Any, Any]] = []
        for key, route in items:
            if isinstance(key, re.Pattern):
                self.patterns.append((key, route))
            elif '*' in key:
                self.patterns.append((re.compile(fnmatch.translate(key)), route))
            else:
                self.map[key] = route

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Optional[Dict[str, Any]]:
        if name in self.map:
            return _as_route(self.map[name])
        for regex, route in self.patterns:
            if regex.match(name):
                return _as_route(route)
        return None


def _as_route(route: Any) -> Dict[str, Any]:
    return {'queue': route} if isinstance(route, (str, Queue)) else dict(route)


def _import(path: str) -> Any:
    module, _, attr = path.partition(':') if ':' in path else path.rpartition('.')
    obj = importlib.import_module(module)
    for part in attr.split('.') if attr else ():
        obj = getattr(obj, part)
    if hasattr(obj, 'route_for_task') and isinstance(obj, type):
        obj = obj()  # Celery instantiates a pre-4.0 router class
    return obj


def prepare(routes: Any) -> List[Callable[..., Any]]:
    """``task_routes`` as a list of routers (Celery's ``prepare``)."""
    if routes is None:
        return []
    if not isinstance(routes, (list, tuple)):
        routes = [routes]
    out: List[Callable[..., Any]] = []
    for route in routes:
        if isinstance(route, (Mapping, list, tuple)):
            out.append(MapRoute(route))
        elif isinstance(route, str):
            out.append(_import(route))
        else:
            out.append(route)
    return out


def _merge(left: Dict[str, Any], right: Dict[str, Any]) -> Dict[str, Any]:
    """Celery's ``lpmerge``: ``left`` updated with the values of ``right`` that are not None."""
    left.update({k: v for k, v in right.items() if v is not None})
    return left


#: The settings a router is built from: one built for the same values is used again.
ROUTER_SETTINGS = (
    'task_routes',
    'task_queues',
    'task_default_queue',
    'task_default_queue_type',
    'task_default_exchange',
    'task_default_exchange_type',
    'task_default_routing_key',
    'task_create_missing_queues',
    'task_create_missing_queue_type',
)


def router_key(conf: Any) -> Tuple[Any, ...]:
    """What a ``Router`` for ``conf`` depends on (compared by value to reuse one)."""
    return tuple(getattr(conf, name) for name in ROUTER_SETTINGS)


class Router:
    """Celery's router over ``conf`` (see the module docstring). No I/O; read-only once
    built, so one may serve many calls and threads while ``router_key(conf)`` is the same.
    """

    def __init__(self, conf: Any) -> None:
        self.conf = conf
        self.routes = prepare(conf.task_routes)
        self.ours = _taskqueues.configured(conf)

    def queue(self, name: str) -> Queue:
        return _taskqueues.task_queue(self.conf, name, self.ours)

    def expand_destination(self, route: Any) -> Dict[str, Any]:
        if isinstance(route, str):
            queue, route = route, {}
        else:
            route = dict(route)
            queue = route.pop('queue', None)
        if queue:
            route['queue'] = queue if isinstance(queue, Queue) else self.queue(queue)
        return route

    def route(
        self,
        options: Dict[str, Any],
        name: str,
        args: Any = (),
        kwargs: Optional[Dict[str, Any]] = None,
        task: Any = None,
    ) -> Dict[str, Any]:
        """The call's ``options`` completed by the first route that answers for ``name``,
        then by the default queue. Raises ``QueueNotFound`` (see the module docstring)."""
        kwargs = kwargs or {}
        options = self.expand_destination(options)
        for router in self.routes:
            if hasattr(router, 'route_for_task'):
                found = router.route_for_task(name, args, kwargs)
            else:
                found = router(name, args, kwargs, options, task=task)
            if found is not None:
                return _merge(self.expand_destination(found), options)
        if 'queue' not in options:
            options = _merge(self.expand_destination(self.conf.task_default_queue), options)
            options['defaulted'] = True
        return options


def destination(conf: Any, options: Dict[str, Any]) -> Tuple[str, str, Optional[Queue]]:
    """``(exchange, routing_key, queue to declare)`` for routed ``options`` (Celery's rule).

    Unlike Celery, a default queue that only stood in for a missing queue is not declared
    when the message goes to a named exchange: it is not where the message goes.
    """
    queue: Optional[Queue] = options.get('queue')
    exchange = options.get('exchange')
    if isinstance(exchange, Exchange):
        exchange = exchange.name
    routing_key = options.get('routing_key')
    exchange_type = options.get('exchange_type')
    if exchange_type is None:
        exchange_type = queue.exchange.type if queue is not None and queue.exchange else 'direct'
    qname = queue.name if queue is not None else None
    if (not exchange or not routing_key) and exchange_type == 'direct':
        return '', qname or routing_key or '', queue
    if exchange is None:
        exchange = (queue.exchange.name if queue and queue.exchange else '') or (
            conf.task_default_exchange or conf.task_default_queue
        )
        routing_key = (
            routing_key
            or (queue.routing_key if queue else '')
            or conf.task_default_routing_key
            or conf.task_default_queue
        )
    return exchange, routing_key or '', None if options.get('defaulted') else queue
