"""The tasks the views send, run by a pika_rpc worker (a Celery worker would do too)::

    cd examples/django_project
    AMQP_URL=amqp://guest:guest@localhost:5672// python -m pika_rpc worker -A demo.tasks -c 8

The tasks are ``@shared_task``: registered with every ``App`` of the process. In the Django
process, ``demo/pika_app.py``'s App finds this module with ``autodiscover_tasks()`` and
``add.delay(...)`` sends through it (the current app). The worker needs no Django: ``-A
demo.tasks`` uses the ``app`` below, which shares only the queue and the task names with the
views. (If your tasks use the ORM, set ``DJANGO_SETTINGS_MODULE`` and call ``django.setup()``.)
"""

import os

from pika_rpc import App, shared_task

#: The worker's App. ``set_as_current=False``: in the Django process, where this module is
#: imported too (it connects only when used), the App of ``pika_app`` stays the current one.
app = App(
    'demo',
    broker=os.environ.get('AMQP_URL'),
    task_default_queue=os.environ.get('CELERY_TASK_DEFAULT_QUEUE', 'celery'),
    set_as_current=False,
)


@shared_task(name='demo.add')
def add(x, y):
    return x + y
