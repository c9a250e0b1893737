"""Sphinx configuration for the pika_rpc documentation (build: sphinx-build -W -b html docs OUT)."""
project = 'pika_rpc'
author = 'the pika_rpc developers'
copyright = 'the pika_rpc developers'

root_doc = master_doc = 'index'
exclude_patterns = ['_build']
