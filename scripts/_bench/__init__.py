"""The benchmark behind ``python scripts/bench.py``: not part of the library.

* ``harness``: fresh processes per run, interleaving, medians, CPU clocks, threads started
  together, queue bookkeeping (every queue a run announced is deleted after it).
* ``report``: the one table (medians per implementation, ratios), targets, JSON lines.
* ``registry``: every scenario, in order, with its rows, targets and whether ``--quick``
  and the default run include it. Adding a scenario: a worker function in the module of
  what it measures, and one ``Scenario(...)`` entry there.
* ``impls``: the implementations compared (pika_rpc, raw pika, Celery) behind one interface.
* ``rawpika``, ``publishers``: raw pika through its public API, and a raw-pika publisher
  in another process (results arrive as from a Celery worker).
* ``taskworkers`` (with ``tasks_pr``, ``tasks_celery``: the task they run): pika_rpc's and
  Celery's task workers in processes of their own; ``features``: what of pika_rpc's
  optional features this checkout has (the Celery plug-in, no-confirm publishing, quorum
  reply queues).
* The scenarios, by what they measure: ``publish`` (storing results), ``receive`` (results
  in bulk), ``latency`` (round trips, polling, many processes), ``footprint``
  (connections, idle CPU, memory, quorum queues), ``large`` (results of megabytes),
  ``e2e`` (through a worker: tasks per second, a fresh process's first result).

A package beside ``bench.py`` (not ``scripts/bench/``: ``import bench`` would then find the
package, not the script) with a leading underscore: nothing in it is a command. Python puts
a script's directory first on ``sys.path``, so ``python scripts/bench.py`` imports it from
any working directory with no install step; the processes it starts run ``bench.py`` too
(``--worker KIND``, ``--publisher``).
"""
