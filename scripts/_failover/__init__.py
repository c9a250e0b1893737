"""Parts of ``scripts/cluster_failover.py``: the workers' task modules, the worker processes
and the 16 client threads with their measurements."""
