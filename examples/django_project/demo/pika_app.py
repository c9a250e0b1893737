"""This process's pika_rpc ``App``, configured from Django's settings.

``DemoConfig.ready()`` (``demo/apps.py``) calls :func:`setup` once per process, and the
views call :func:`get_app`. ``autodiscover_tasks()`` imports the ``tasks.py`` of every
installed app when the task registry is first used, as Celery does. One ``App`` per process is all a Django site needs: its
``backend`` is shared by every thread (one connection, one reply queue, one I/O thread).

Processes: the dev server's autoreloader re-executes ``manage.py`` in a child process
(and again after each code change): each process runs ``ready()`` and has its own App;
the App connects on first use, so the watching parent never opens a connection. A process
*forked* from one that already used the App (gunicorn ``--preload``, ``multiprocessing``)
gets a new reply queue and its own connection on first use, by itself: nothing to do.
"""

import logging
import os
import threading
from typing import Optional

from pika_rpc import App

LOGGER = logging.getLogger(__name__)

_app: Optional[App] = None
_lock = threading.Lock()


def get_app() -> App:
    """The App of this process (created and configured from settings on the first call)."""
    global _app
    if _app is None:
        with _lock:
            if _app is None:
                app = App(main='djproject')
                app.config_from_object('django.conf:settings', namespace='CELERY')
                _app = app
    return _app


def setup(connect: bool = False) -> App:
    """Create the App; with ``connect``, connect and declare the reply queue now."""
    app = get_app()
    app.autodiscover_tasks()  # each installed app's tasks.py, when the registry is first used
    if connect:
        app.backend.result_consumer.start()
        LOGGER.info('pika_rpc connected: pid %d, reply queue %s', os.getpid(), app.backend.oid)
    return app
