#!/usr/bin/env python3
"""pika_rpc vs raw pika vs Celery 5 ``rpc://``: the same scenarios for all, one table.

Each figure is measured in a fresh subprocess per implementation and run; the
implementations of a scenario run interleaved (their order rotates every round), N rounds
(``--repeats``, default 3); the table shows medians and the ratios pika_rpc/raw pika and
pika_rpc/Celery, then the targets with a verdict, then JSON lines (every run).

The scenarios are listed below (``scripts/_bench/registry.py`` holds them, the modules of
``scripts/_bench/`` what they measure). A plain run does the default ones; ``--quick``
those marked quick, with smaller sizes and one round; the detail ones break the I/O thread
and the backend down further (``--scenarios publish,consume`` or ``--scenarios all``).

``--quick`` is the stated subset: one round, the scenarios marked quick (not ``quorum``),
T=1,8 (``e2e``: T=8 only, no prefork worker; ``procs``: P=4 only), results of at most 16 MB
(no ``large_load``), the smaller sizes below; it takes under 2 minutes on 2 cores.
``--plot out.png`` draws the ``e2e`` figures of the run (tasks/s and p99 against client
threads, a line per client and worker; matplotlib, the ``bench`` extra).

Usage::

    python scripts/bench.py --quick        # < 2 minutes
    python scripts/bench.py --plot e2e.png # 3 rounds, T=1,8,64 (~15-20 minutes on 2 cores)
    python scripts/bench.py --repeats 5 --scenarios rtt,threads --threads 1,8,64
    python scripts/bench.py --scenarios e2e --e2e-threads 8,64 --plot e2e.png
    python scripts/bench.py --scenarios publish,consume --list    # what would run

Progress on stderr; the tables and JSON lines on stdout. Every queue a run created is
deleted after it (Celery's per-thread reply queues too). Needs no install step: the
repository's ``pika_rpc`` is imported (``pip install -e '.[bench]'`` for Celery).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
from typing import Callable, List, Optional, Sequence

from _bench import harness, registry
from _bench.report import Report


def _ints(text: str) -> List[int]:
    return [int(x) for x in text.split(',')]


def _floats(text: str) -> List[float]:
    return [float(x) for x in text.split(',')]


#: (flag, type, default, default with --quick, help): the sizes the scenarios read.
OPTIONS = (
    ('--threads', _ints, '1,8,64', '1,8', 'threads, threads_rtt: T values'),
    ('--n', int, 2000, 500, 'store, publish: results per thread'),
    ('--seq', int, 5000, 5000, 'get_seq: results'),
    ('--iters', int, 2000, 500, 'rtt: round trips'),
    ('--iters-total', int, 2048, 400, 'threads_rtt: round trips over all threads'),
    ('--total', int, 4096, 4096, 'threads: results'),
    ('--polls', int, 500, 150, 'poll: results'),
    ('--res-threads', int, 64, 64, 'resources: threads'),
    ('--idle', float, 10.0, 3.0, 'resources: idle seconds'),
    ('--tasks', int, 100000, 10000, 'memory: tasks'),
    (
        '--run-timeout',
        float,
        60.0,
        30.0,
        'rtt, threads, threads_rtt, procs, e2e: per-run timeout in s',
    ),
    (
        '--large-sizes',
        _floats,
        '1,4,16,24,64',
        '1,16',
        'large: result sizes in MB (24 is the baseline of large_load, not run with --quick)',
    ),
    ('--large-iters', int, 3, 3, 'large: results per run and size'),
    ('--k64', int, 60, 30, 'publish: results per thread with 64 threads'),
    ('--n-big', int, 30000, 8000, 'publish: messages of the large pipelined publish'),
    ('--m', int, 10000, 3000, 'consume: messages'),
    ('--m-ack', int, 2000, 600, 'consume: messages for a Consumer acking each'),
    ('--e2e-threads', _ints, '1,8,64', '8', 'e2e: client threads T'),
    ('--e2e-total', int, 1000, 400, 'e2e: tasks per run, over all its threads'),
    ('--procs', _ints, '1,2,4', '4', 'procs: processes P'),
    ('--procs-threads', int, 16, 16, 'procs: threads per process'),
    ('--procs-iters', int, 100, 25, 'procs: round trips per thread'),
    ('--quorum-queues', int, 20, 10, 'quorum: reply queues declared per queue type'),
)


def _scenario_list() -> str:
    lines = ['scenarios (default: those marked default; --quick: those marked quick):']
    for s in registry.SCENARIOS:
        marks = ','.join(m for m, on in (('default', s.default), ('quick', s.quick)) if on)
        needs = f' (runs {", ".join(s.needs)} too)' if s.needs else ''
        lines.append(f'  {s.name:<15} {s.summary}{needs}' + (f' [{marks}]' if marks else ''))
    return '\n'.join(lines)


def parse_options(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, every size resolved (``--quick`` picks the quick defaults)."""
    ap = argparse.ArgumentParser(
        prog='python scripts/bench.py',
        description=__doc__.split('\n')[0],
        epilog=_scenario_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        '--quick',
        action='store_true',
        help='< 2 minutes: 1 round, the quick scenarios, smaller sizes',
    )
    ap.add_argument('--repeats', type=int, help='rounds (default 3, quick 1)')
    ap.add_argument('--scenarios', help='comma-separated names (below), or "all"')
    ap.add_argument(
        '--only',
        help='comma-separated kind names or patterns (threads8.*): '
        'run only those of the scenarios chosen',
    )
    ap.add_argument('--list', action='store_true', help='print the kinds that would run, exit')
    ap.add_argument(
        '--plot',
        metavar='PNG',
        help='draw the e2e figures of this run to PNG (tasks/s and p99 against threads)',
    )
    ap.add_argument(
        '--memory-repeats',
        action='store_true',
        dest='memory_repeats',
        help='repeat the memory runs too (default: once each)',
    )
    ap.add_argument(
        '--no-shared',
        action='store_false',
        dest='shared',
        help='skip the Celery-shared-backend and Celery-poll-after-get runs '
        '(--quick skips them too)',
    )
    sizes = ap.add_argument_group('sizes (default / with --quick)')
    for flag, kind, default, quick, text in OPTIONS:
        shown = lambda v: v if isinstance(v, str) else f'{v:g}'
        sizes.add_argument(
            flag,
            type=kind,
            metavar='LIST' if kind in (_ints, _floats) else 'N',
            help=f'{text} ({shown(default)} / {shown(quick)})',
        )
    o = ap.parse_args(argv)
    for flag, kind, default, quick, _ in OPTIONS:
        dest = flag[2:].replace('-', '_')
        if getattr(o, dest) is None:
            value = quick if o.quick else default
            setattr(o, dest, kind(value) if isinstance(value, str) else value)
    o.repeats = o.repeats or (1 if o.quick else 3)
    o.shared = o.shared and not o.quick
    try:
        o.chosen = registry.select(o.scenarios.split(',') if o.scenarios else None, o.quick)
    except ValueError as exc:
        ap.error(str(exc))
    return o


def plan(o: argparse.Namespace) -> List[List[harness.Kind]]:
    """The kinds of the chosen scenarios, in groups (``--only`` filters them)."""
    groups = [g for s in o.chosen for g in s.groups(o)]
    if o.only:
        patterns = o.only.split(',')
        groups = [
            [k for k in g if any(fnmatch.fnmatchcase(k.name, p) for p in patterns)] for g in groups
        ]
    return [g for g in groups if g]


def run(o: argparse.Namespace, log: Callable[[str], None]) -> None:
    from _bench.rawpika import broker_url, delete_queues

    from pika_rpc.findbroker import mask_url

    groups = plan(o)
    repeated = [g for g in ([k for k in g if not k.once] for g in groups) if g]
    once = [g for g in ([k for k in g if k.once] for g in groups) if g]
    if o.list:
        for kind in (k for g in repeated + once for k in g):
            print(f'{kind.name:<28} {"once " if kind.once else ""}{json.dumps(kind.spec())}')
        return
    url = broker_url()
    log(
        f'bench: broker {mask_url(url)}, {o.repeats} round(s), scenarios '
        f'{",".join(s.name for s in o.chosen)}, T={o.threads}; '
        f'{sum(map(len, repeated))} kinds x {o.repeats} + {sum(map(len, once))} once'
    )
    compiled = harness.compile_package()
    load0 = harness.loadavg()
    t0 = time.monotonic()
    runs = harness.interleave(repeated, o.repeats, url, log)
    runs.update(harness.interleave(once, 1, url, log))
    took = time.monotonic() - t0
    left = harness.queues_left(harness.DELETED_QUEUES)
    if left:
        log(f'{len(left)} queue(s) still there after deleting them (deleting again): {left[:5]}')
        delete_queues(url, left)
    import celery
    import pika

    print(
        f'## bench ({"quick" if o.quick else "default"}; {o.repeats} round(s), fresh process '
        f'per run, implementations interleaved; {took:.0f} s; cpus={os.cpu_count()}; '
        f'pika_rpc byte-compiled first: {"yes" if compiled else "NO"}; '
        f'loadavg before {load0}, after {harness.loadavg()}; pika {pika.__version__}, celery '
        f'{celery.__version__}; {len(set(harness.DELETED_QUEUES))} queues created and '
        f'deleted, {"?" if left is None else len(left)} left over)\n'
    )
    report = Report(runs, o.repeats)
    for scenario in o.chosen:
        scenario.add_to(report, o)
    print(report.text())
    print('\nJSON lines:')
    for line in report.json_lines({k.name: k.spec() for g in groups for k in g}):
        print(line)
    if o.plot:
        from _bench.e2e import plot_e2e

        title = (
            f'send_task -> get() through a worker (median of {o.repeats}, {os.cpu_count()} cores)'
        )
        if plot_e2e(runs, o.plot, title):
            log(f'plot written to {o.plot}')
        else:
            log(f'no e2e figures in this run: {o.plot} not written')


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (['--worker'], ['--publisher']):  # a process the driver started
        role = argparse.ArgumentParser(prog='bench.py (internal)', add_help=False)
        role.add_argument('--worker')
        role.add_argument('--publisher', action='store_true')
        role.add_argument('--params', type=json.loads, default={})
        role.add_argument('--url', required=True)
        a = role.parse_args(argv)
        if a.publisher:
            from _bench.publishers import publisher_main

            publisher_main(a.url)
        else:
            harness.worker_main(a.worker, a.params, a.url)
        return
    run(parse_options(argv), lambda s: print(s, file=sys.stderr, flush=True))


if __name__ == '__main__':
    main()
