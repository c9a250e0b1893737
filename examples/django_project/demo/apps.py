from django.apps import AppConfig
from django.conf import settings


class DemoConfig(AppConfig):
    name = 'demo'

    def ready(self) -> None:
        # Once per process: create the pika_rpc App from settings (CELERY_* names).
        from . import pika_app

        pika_app.setup(connect=getattr(settings, 'PIKA_RPC_CONNECT_AT_START', False))
