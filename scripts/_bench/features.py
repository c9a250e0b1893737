"""Optional features of pika_rpc that some scenarios use where the checkout has them.

The benchmark runs on whatever ``pika_rpc`` is imported; some combinations exist only in
newer versions. Each is detected, never assumed: a scenario includes the combination when
it is there and adds a note row saying why it is missing otherwise.

* ``celery_plugin()``: pika_rpc's Celery result-backend plug-in
  (``result_backend='pika-rpc://'``): the ``pika-rpc`` entry point of the
  ``celery.result_backends`` group, else a backend class in ``pika_rpc.celery_backend``
  (an uninstalled checkout has no entry points: ``use_celery_plugin`` then tells the Celery
  app's loader the alias).
* ``quorum()``: ``result_queue_type='quorum'`` accepted by ``pika_rpc.config.Settings`` and
  giving a quorum reply queue.
* ``NO_CONFIRMS`` (``broker_transport_options={'confirm_publish': False}``, kombu's name):
  ``Settings`` accepts any transport option, so whether it is honoured is only known by
  publishing: ``confirms_off(pr)`` (in the run that uses it, before its clock starts).

Everything here is cheap and offline except ``confirms_off``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
from typing import Any, Optional, Tuple

#: The Celery URL scheme (and entry point name) of pika_rpc's result-backend plug-in.
PLUGIN_SCHEME = 'pika-rpc'
PLUGIN_MODULE = 'pika_rpc.celery_backend'
#: pika_rpc's settings for publishing without confirms (kombu's transport option).
NO_CONFIRMS = {'broker_transport_options': {'confirm_publish': False}}


def _entry_point(group: str, name: str) -> bool:
    from importlib import metadata

    try:
        eps: Any = metadata.entry_points()
    except Exception:
        return False
    found = eps.select(group=group) if hasattr(eps, 'select') else eps.get(group, ())
    return any(ep.name == name for ep in found)


@functools.lru_cache(maxsize=None)
def celery_plugin() -> Tuple[Optional[str], str]:
    """``(how, why)``: ``how`` is ``'entry point'``, a ``module:Class`` path, or None when
    pika_rpc has no Celery result-backend plug-in (``why`` says what was looked for)."""
    if _entry_point('celery.result_backends', PLUGIN_SCHEME):
        return 'entry point', f'entry point {PLUGIN_SCHEME!r} of celery.result_backends'
    try:
        spec = importlib.util.find_spec(PLUGIN_MODULE)
    except ImportError:
        spec = None
    if spec is None:
        return None, (
            f'no {PLUGIN_MODULE} module and no {PLUGIN_SCHEME!r} entry point of '
            'celery.result_backends in this pika_rpc'
        )
    try:
        from celery.backends.base import Backend

        module = importlib.import_module(PLUGIN_MODULE)
    except Exception as exc:
        return None, f'{PLUGIN_MODULE} does not import: {exc!r}'[:300]
    names = getattr(module, '__all__', None) or dir(module)
    classes = [
        obj
        for obj in (getattr(module, n, None) for n in names)
        if inspect.isclass(obj) and issubclass(obj, Backend) and obj.__module__ == PLUGIN_MODULE
    ]
    if not classes:
        return None, f'{PLUGIN_MODULE} holds no celery Backend class'
    return f'{PLUGIN_MODULE}:{classes[0].__name__}', f'{PLUGIN_MODULE}.{classes[0].__name__}'


def use_celery_plugin(app: Any) -> None:
    """Let ``app`` (a Celery app) resolve ``pika-rpc://``: nothing to do with the entry point
    installed; else the alias is given to its loader. ``RuntimeError`` without a plug-in."""
    how, why = celery_plugin()
    if how is None:
        raise RuntimeError(f'pika_rpc has no Celery result-backend plug-in: {why}')
    if how != 'entry point':
        app.loader.override_backends = dict(app.loader.override_backends, **{PLUGIN_SCHEME: how})


@functools.lru_cache(maxsize=None)
def quorum() -> Tuple[bool, str]:
    """``(available, why)`` for ``result_queue_type='quorum'``."""
    from pika_rpc.config import Settings, reply_queue_arguments

    try:
        args = reply_queue_arguments(Settings(result_queue_type='quorum'))
    except (TypeError, ValueError) as exc:
        return False, f'pika_rpc.config.Settings does not take it: {exc}'[:300]
    if args.get('x-queue-type') != 'quorum':
        return False, f'accepted, but the reply queue arguments are {args}'
    return True, f'reply queue arguments {args}'


def confirms_off(pr: Any) -> Tuple[bool, str]:
    """Three round trips through ``pr`` (an ``impls.PR`` made with ``NO_CONFIRMS``), then
    whether a confirm came (``link.stats()['confirms']``): ``(honoured, why)``."""
    import uuid

    link = pr.backend._get_link()
    before = link.stats()
    for _ in range(3):
        tid = str(uuid.uuid4())
        pr.register(tid)
        pr.store(tid, 0, pr.oid)
        pr.get(tid, 10)
    after = link.stats()
    confirms = after.get('confirms', 0) - before.get('confirms', 0)
    publishes = after.get('publishes', 0) - before.get('publishes', 0)
    if confirms:
        return False, (
            "broker_transport_options={'confirm_publish': False} is not honoured by this "
            f'pika_rpc ({confirms} confirms for {publishes} publishes)'
        )
    return True, f'{publishes} publishes, no confirm'
