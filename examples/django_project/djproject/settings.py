"""Settings of the pika_rpc Django example (no database: the views only talk to RabbitMQ).

pika_rpc reads the ``CELERY_``-prefixed names, as Celery does in a Django project
(``app.config_from_object('django.conf:settings', namespace='CELERY')`` in
``demo/pika_app.py``).
"""

import os
import tempfile

SECRET_KEY = os.environ.get('DJANGO_SECRET_KEY', 'example-only-not-secret')
DEBUG = os.environ.get('DJANGO_DEBUG', '') == '1'
ALLOWED_HOSTS = ['127.0.0.1', 'localhost', '[::1]']

INSTALLED_APPS = ['demo.apps.DemoConfig']
MIDDLEWARE = []
ROOT_URLCONF = 'djproject.urls'
WSGI_APPLICATION = 'djproject.wsgi.application'
DATABASES = {}
USE_TZ = True

# ---- pika_rpc (Celery's setting names with the CELERY_ prefix)
CELERY_BROKER_URL = os.environ.get('AMQP_URL', 'amqp://guest:guest@localhost:5672//')
CELERY_TASK_DEFAULT_QUEUE = os.environ.get('CELERY_TASK_DEFAULT_QUEUE', 'celery')
CELERY_RESULT_EXPIRES = int(os.environ.get('CELERY_RESULT_EXPIRES', 3600))  # s: a dead
# process's reply queue is deleted by the broker after this long (a clean exit deletes it)
CELERY_BROKER_CONNECTION_MAX_RETRIES = 10

# Connect in DemoConfig.ready() instead of on the first request. With gunicorn --preload
# that connection belongs to the master; every worker it forks opens its own.
PIKA_RPC_CONNECT_AT_START = os.environ.get('PIKA_RPC_CONNECT_AT_START', '') == '1'

# The result store of the /submit + /status pattern: shared by every process of this host.
# Use your database or Redis in production; a file cache keeps the example database-free.
CACHES = {
    'default': {
        'BACKEND': 'django.core.cache.backends.filebased.FileBasedCache',
        'LOCATION': os.environ.get(
            'DJANGO_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'pika-rpc-django-example')
        ),
    }
}

LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'handlers': {'console': {'class': 'logging.StreamHandler'}},
    'loggers': {
        'demo': {'handlers': ['console'], 'level': 'INFO'},
        'pika_rpc': {'handlers': ['console'], 'level': 'WARNING'},
    },
}
