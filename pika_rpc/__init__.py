"""pika_rpc: Celery rpc:// result backend on pika."""
