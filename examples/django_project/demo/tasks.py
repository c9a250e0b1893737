"""The tasks the views send, run by a pika_rpc worker (a Celery worker would do too)::

    cd examples/django_project
    AMQP_URL=amqp://guest:guest@localhost:5672// python -m pika_rpc worker -A demo.tasks -c 8

The worker needs no Django: it shares only the queue and the task names with the views.
(If your tasks use the ORM, set ``DJANGO_SETTINGS_MODULE`` and call ``django.setup()`` here.)
"""

import os

from pika_rpc import App

app = App(
    os.environ.get('AMQP_URL'),
    task_default_queue=os.environ.get('CELERY_TASK_DEFAULT_QUEUE', 'celery'),
)


@app.task(name='demo.add')
def add(x, y):
    return x + y
