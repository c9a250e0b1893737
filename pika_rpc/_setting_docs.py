"""One line per setting, for the settings page of the docs (``docs/settings.rst``).

Pure data, no imports: the names, defaults and checks of the settings live in ``config``
(``_SPECS``); this module only says what each one does. ``tests/unit/test_setting_docs.py``
checks that its keys are exactly ``_SPECS``'s, so a setting added without a line here (or a
line left for a setting removed) fails the tests. A line is reStructuredText: the docs
render it as it is.
"""

from __future__ import annotations

from typing import Dict

__all__ = ['DESCRIPTIONS']

DESCRIPTIONS: Dict[str, str] = {
    # the broker
    'broker_url': (
        'kombu-style URL (``amqp://user:password@host:port/vhost``; ``amqps://`` for TLS). '
        'A ``;``-separated string or a list gives failover addresses. None: ``$AMQP_URL``, '
        'else ``amqp://guest:guest@localhost:5672//``.'
    ),
    'broker_failover_strategy': (
        "``'round-robin'`` (kombu's order) or ``'shuffle'`` (the address list shuffled once "
        'per process, first connection included, then rotated).'
    ),
    'broker_heartbeat': (
        "AMQP heartbeat in seconds (rounded up); 0 turns it off, None takes the broker's."
    ),
    'broker_connection_timeout': 'Seconds one connection attempt may take (TCP, TLS, AMQP).',
    'broker_connection_retry': (
        'False: a single connection attempt; a failure is reported at once.'
    ),
    'broker_connection_retry_on_startup': (
        'True: a worker that cannot connect at start keeps retrying (a line per attempt) '
        'instead of exiting; it exits with status 4 when the retries run out.'
    ),
    'broker_connection_max_retries': (
        'Connection attempts before giving up with ``ConnectionLost``; 0 or None: until '
        "the call's deadline."
    ),
    'broker_use_ssl': (
        'True, or a dict of ``ssl`` options (``ca_certs``, ``certfile``, ``keyfile``, '
        '``cert_reqs``...), to connect with TLS.'
    ),
    'broker_transport_options': (
        "kombu's transport options that apply to RabbitMQ (``connect_timeout``, "
        '``heartbeat``, ``client_properties``, the connect retry intervals...).'
    ),
    'blocked_connection_timeout': (
        'Seconds the broker may block publishing (a memory or disk alarm) before the '
        'connection is dropped and re-made; None: no limit.'
    ),
    'broker_consumer_retry_interval': (
        'Seconds between attempts to re-subscribe a consumer the broker refused (its '
        "queue's node is down)."
    ),
    'broker_consumer_max_retries': (
        'Refused re-subscriptions in a row before a consumer gives up (a ``Worker`` then '
        'fails); 0 or None: no limit.'
    ),
    'broker_native_delayed_delivery_queue_type': (
        'Type of the ``celery_delayed_*`` queues that hold ``eta``/``countdown`` tasks of '
        "quorum queues (Celery 5.5's native delayed delivery)."
    ),
    # results
    'result_backend': ("The result backend; only ``'rpc://'`` (the default) is accepted."),
    'result_expires': (
        'Seconds (or a ``timedelta``) an unused reply queue lives (its ``x-expires``); None '
        'or 0 still give one day.'
    ),
    'result_queue_type': (
        "The reply queue's type: ``'classic'`` or ``'quorum'`` (replicated: a node's loss "
        'loses no result).'
    ),
    'result_serializer': 'Serializer of stored results: ``json``, ``msgpack``, ``yaml``, ``pickle``.',
    'result_accept_content': (
        'Content types or serializer names accepted when reading results; None: ``accept_content``.'
    ),
    'result_persistent': 'True: results are published persistent (delivery mode 2).',
    'result_extended': (
        "True: stored results also carry the task's name, args, kwargs, worker, retries and queue."
    ),
    'result_cache_max': 'Final results kept per process for later reads (an LRU of task ids).',
    'result_cache_max_bytes': ('The same cache bounded by the body bytes of the results it keeps.'),
    'result_max_size': (
        "Largest result body read, in bytes; a larger one fails its task's waiters. None: no limit."
    ),
    'result_backend_retry_policy': (
        'How storing a result retries a failed publish (``max_retries``, '
        '``interval_start``, ``interval_step``, ``interval_max``).'
    ),
    'result_backend_transport_options': (
        "Accepted for Celery's configurations; pika_rpc does not use it."
    ),
    'pending_history_max': (
        'Messages kept per pending task and replayed to a late ``on_message`` callback.'
    ),
    'pending_max': ('Tasks the process may wait on at once (their slots in the pending table).'),
    'out_of_band_max': (
        'Results kept for task ids this process did not send (out-of-band results).'
    ),
    'large_body_threshold': (
        'Result bodies larger than this (bytes) are decoded on a decoder thread, not on '
        'the I/O thread.'
    ),
    # sending tasks and publishing
    'task_serializer': 'Serializer of task messages sent by ``send_task`` and ``Producer``.',
    'accept_content': (
        'Content types or serializer names accepted when reading messages (``json`` only '
        'by default).'
    ),
    'task_default_queue': 'Queue of ``send_task`` and of the worker when none is named.',
    'task_default_exchange': (
        'Exchange of ``send_task``; None: the default exchange (routing by queue name).'
    ),
    'task_default_routing_key': "Routing key of ``send_task``; None: the queue's name.",
    'task_default_queue_type': (
        "Type of the default task queue when declared: ``'classic'`` or ``'quorum'``."
    ),
    'task_create_missing_queue_type': (
        "Type of a task queue created because it did not exist: ``'classic'`` or ``'quorum'``."
    ),
    'task_queues': (
        "Celery's ``task_queues``: the task queues declared as configured (``Queue`` "
        'objects, or a mapping of name to options).'
    ),
    'task_publish_retry': 'False: ``send_task`` does not retry a failed publish.',
    'task_publish_retry_policy': (
        'How ``send_task`` retries a failed publish; a partial dict is merged over '
        "Celery's default."
    ),
    'publish_timeout': "Seconds a publish waits for the broker's confirm.",
    'direct_writes': (
        'True: a caller writes its publication to a plaintext socket itself; False: '
        'every publication goes through the I/O thread.'
    ),
    'handoff_max': (
        'Commands and publications queued for the I/O thread at most; a full queue '
        'blocks callers up to their deadline.'
    ),
    'timezone': ('Time zone of ``date_done`` in stored results (an IANA name); None: UTC.'),
    'enable_utc': (
        "Accepted for Celery's configurations; not used (``date_done`` follows ``timezone``)."
    ),
    # tasks and the worker
    'task_track_started': 'True: a worker stores STARTED when it starts a task.',
    'task_ignore_result': 'True: tasks store no result unless a task or call says otherwise.',
    'worker_prefetch_multiplier': (
        'Messages a worker reserves per pool thread (prefetch = multiplier x '
        'concurrency); 0: no limit.'
    ),
    'worker_detect_quorum_queues': (
        'True: a worker on quorum queues asks for per-consumer QoS, never global QoS '
        '(which quorum queues refuse).'
    ),
}
