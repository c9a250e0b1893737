"""``python -m pika_rpc worker -A module -Q queues -c N``: see :mod:`pika_rpc.cli`."""

import sys

from .cli import main

if __name__ == '__main__':
    sys.exit(main())
