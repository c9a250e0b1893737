"""Every scenario, in the order they run and report: the one list to read or extend.

A scenario is a worker (a function run in a fresh process per run, in the module of what
it measures) and an entry here. The entry says:

* which kinds run: the worker once per implementation in ``impls`` (its params:
  ``params(options)``, ``impl``, and each of ``variants(options)``; a variant's ``v`` goes
  into the kind's name: ``threads_rtt8.pr``), or a ``plan(options)`` of its own;
* what the table shows: ``rows`` (a median per implementation and their ratios) and
  ``targets`` (a ratio to an implementation, or pika_rpc's value, against a bound), and/or
  a ``report(report, options)`` for what rows cannot say;
* when it runs: ``default`` (a plain ``python scripts/bench.py``), ``quick`` (``--quick``),
  ``needs`` (scenarios whose kinds its rows read, run along with it), ``once`` (a single
  round, after the repeated ones).

Adding a scenario: write ``w_NAME(params, url) -> dict`` in the module of what it measures,
add ``Scenario('NAME', 'one line for --help', worker=..., rows=..., targets=...)`` below
(and an option in ``scripts/bench.py`` if it needs a size of its own).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import e2e, footprint, large, latency, publish, receive
from .harness import Kind, Worker
from .report import Report

Options = Any  # the parsed command line (argparse.Namespace), sizes resolved


@dataclasses.dataclass(frozen=True)
class Row:
    """A table row: the median of ``key`` for the implementations in ``cols`` (pika_rpc,
    raw pika, Celery; None: no cell). ``label`` and ``note`` are formatted with the
    options and the variant (``{seq:,}``, ``{threads}``)."""

    label: str
    key: str
    unit: str = ''
    cols: Tuple[Optional[str], ...] = ('pr', 'raw', 'celery')
    note: str = ''


@dataclasses.dataclass(frozen=True)
class Target:
    """pika_rpc's median of ``key`` (the first of the scenario's ``impls``), divided by
    implementation ``versus``'s when given, ``op bound``."""

    name: str
    key: str
    op: str
    bound: float
    versus: Optional[str] = None


def _nothing(o: Options) -> Dict[str, Any]:
    return {}


def _one(o: Options) -> Sequence[Dict[str, Any]]:
    return ({},)


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    worker: Optional[Worker] = None
    impls: Tuple[str, ...] = ('pr', 'raw', 'celery')
    params: Callable[[Options], Dict[str, Any]] = _nothing
    variants: Callable[[Options], Sequence[Dict[str, Any]]] = _one
    plan: Optional[Callable[[Options], List[List[Kind]]]] = None
    rows: Tuple[Row, ...] = ()
    targets: Tuple[Target, ...] = ()
    report: Optional[Callable[[Report, Options], None]] = None
    once: Callable[[Options], bool] = lambda o: False
    default: bool = True
    quick: bool = True
    needs: Tuple[str, ...] = ()

    def groups(self, o: Options) -> List[List[Kind]]:
        """The kinds to run, in groups whose order rotates each round."""
        if self.plan is not None:
            return self.plan(o)
        groups = []
        for variant in self.variants(o):
            params = dict(self.params(o), **{k: v for k, v in variant.items() if k != 'v'})
            groups.append(
                [
                    Kind(
                        f'{self.name}{variant.get("v", "")}.{impl}',
                        self.worker,
                        dict(params, impl=impl),
                        once=self.once(o),
                    )
                    for impl in self.impls
                ]
            )
        return groups

    def add_to(self, r: Report, o: Options) -> None:
        """Its rows and targets (for each variant that ran), then its own ``report``."""
        for variant in self.variants(o) if self.rows or self.targets else ():
            prefix = f'{self.name}{variant.get("v", "")}'
            if not any(kind.startswith(prefix + '.') for kind in r.runs):
                continue
            fields = dict(vars(o), **variant)

            def kind(impl: Optional[str], prefix: str = prefix) -> Optional[str]:
                return f'{prefix}.{impl}' if impl else None

            for row in self.rows:
                r.row(
                    row.label.format(**fields),
                    row.key,
                    [kind(c) for c in row.cols],
                    row.unit,
                    row.note.format(**fields),
                )
            for t in self.targets:
                value = r.med(kind(self.impls[0]), t.key)
                if t.versus:
                    r.target_ratio(
                        t.name.format(**fields), value, r.med(kind(t.versus), t.key), t.op, t.bound
                    )
                else:
                    r.target(t.name.format(**fields), value, t.op, t.bound)
        if self.report is not None:
            self.report(r, o)


RAW_CONFIRM, RAW_NOCONFIRM = ('pr', 'raw_confirm', 'celery'), ('pr', 'raw_noconfirm', None)
PLAIN = ('pr_plain', 'raw_noconfirm', 'celery')

SCENARIOS: Tuple[Scenario, ...] = (
    Scenario(
        'store',
        'results stored per second by 1 and 8 threads, to a queue nobody consumes',
        worker=publish.w_store,
        impls=('pr', 'raw_confirm', 'raw_noconfirm', 'celery'),
        params=lambda o: {'n': o.n},
        variants=lambda o: [{'v': t, 'threads': t} for t in (1, 8)],
        report=publish.store_report,
    ),
    Scenario(
        'get_seq',
        'results pre-published, then subscribe and get() each in order',
        worker=receive.w_get_seq,
        params=lambda o: {'n': o.seq},
        rows=(
            Row('get_seq ({seq:,} pre-published, get() each in order)', 'rate', ' results/s'),
            Row('  CPU per result', 'cpu_us_per_result', ' us'),
        ),
        targets=(
            Target('get_seq >= 0.8x raw pika', 'rate', '>=', 0.8, 'raw'),
            Target('get_seq >= 4x Celery', 'rate', '>=', 4, 'celery'),
            Target('get_seq CPU per result <= 1.0x raw pika', 'cpu_us_per_result', '<=', 1, 'raw'),
        ),
    ),
    Scenario(
        'get_seq_live',
        'get_seq with the results published by another process while the client waits',
        worker=receive.w_get_seq_live,
        params=lambda o: {'n': o.seq},
        rows=(
            Row(
                'get_seq_live ({seq:,} published while get() waits, each in order)',
                'rate',
                ' results/s',
                note='the same raw pika publisher process for every client',
            ),
            Row('  CPU per result (the client)', 'cpu_us_per_result', ' us'),
            Row(
                '  publisher rate (other process)',
                'publisher_rate',
                '/s',
                note='when close to results/s it is the bound',
            ),
        ),
        targets=(
            Target('get_seq_live >= 0.9x raw pika', 'rate', '>=', 0.9, 'raw'),
            Target(
                'get_seq_live CPU per result <= 1.0x raw pika', 'cpu_us_per_result', '<=', 1, 'raw'
            ),
        ),
    ),
    Scenario(
        'rtt',
        'one thread: store a result, get() woken with it (ping-pong), p50 and p99',
        worker=latency.w_pingpong,
        impls=('pr', 'raw_confirm', 'raw_noconfirm', 'celery'),
        params=lambda o: {'threads': 1, 'iters': o.iters, 'timeout': o.run_timeout},
        rows=(
            Row(
                'rtt p50 (1 thread, {iters:,} round trips) [raw: sync confirms]',
                'p50_us',
                ' us',
                RAW_CONFIRM,
            ),
            Row('rtt p99 [raw: sync confirms]', 'p99_us', ' us', RAW_CONFIRM),
            Row('  rtt p50 [raw: no confirms]', 'p50_us', ' us', RAW_NOCONFIRM),
            Row('  rtt p99 [raw: no confirms]', 'p99_us', ' us', RAW_NOCONFIRM),
            Row('  CPU per round trip [raw: sync confirms]', 'cpu_us_per_iter', ' us', RAW_CONFIRM),
        ),
        targets=(
            Target('rtt p50 <= 1.3x raw pika (sync confirms)', 'p50_us', '<=', 1.3, 'raw_confirm'),
            Target('rtt p99 <= 1.5x raw pika (sync confirms)', 'p99_us', '<=', 1.5, 'raw_confirm'),
        ),
    ),
    Scenario(
        'rtt_plain',
        'rtt with neither side confirming (pika_rpc: confirm_publish=False where it exists)',
        worker=latency.w_pingpong,
        impls=('pr_plain', 'raw_noconfirm', 'celery'),
        params=lambda o: {'threads': 1, 'iters': o.iters, 'timeout': o.run_timeout},
        rows=(
            Row(
                'rtt_plain p50 (1 thread, {iters:,} round trips, no confirms)',
                'p50_us',
                ' us',
                PLAIN,
                "pika_rpc: broker_transport_options={{'confirm_publish': False}}",
            ),
            Row('rtt_plain p99 (no confirms)', 'p99_us', ' us', PLAIN),
            Row('  CPU per round trip (no confirms)', 'cpu_us_per_iter', ' us', PLAIN),
        ),
        targets=(
            Target(
                'rtt_plain p50 <= 1.15x raw pika (no confirms)',
                'p50_us',
                '<=',
                1.15,
                'raw_noconfirm',
            ),
            Target(
                'rtt_plain p99 <= 1.5x raw pika (no confirms)', 'p99_us', '<=', 1.5, 'raw_noconfirm'
            ),
        ),
        report=latency.rtt_plain_report,
    ),
    Scenario(
        'threads',
        'T threads each await their share of results another process publishes',
        plan=receive.threads_plan,
        report=receive.threads_report,
    ),
    Scenario(
        'threads_rtt',
        'T threads doing ping-pongs at once (T=1: rtt), p50 and p99',
        worker=latency.w_pingpong,
        params=lambda o: {'timeout': o.run_timeout},
        variants=lambda o: [
            {'v': t, 'threads': t, 'iters': max(20, o.iters_total // t)}
            for t in o.threads
            if t != 1
        ],
        report=latency.threads_rtt_report,
    ),
    Scenario(
        'procs',
        'P processes x 16 threads doing round trips at once: in all, and broker connections',
        plan=latency.procs_plan,
        report=latency.procs_report,
    ),
    Scenario(
        'poll',
        "get_task_meta() in a loop until another process's result is there",
        plan=latency.poll_plan,
        report=latency.poll_report,
    ),
    Scenario(
        'resources',
        'T threads waiting in get(): broker connections, queues, idle CPU, RSS',
        worker=footprint.w_resources,
        params=lambda o: {'idle': o.idle, 'timeout': 60},
        variants=lambda o: [{'v': o.res_threads, 'threads': o.res_threads}],
        report=footprint.resources_report,
    ),
    Scenario(
        'memory',
        'RSS growth over TASKS results from another process (once per run)',
        worker=footprint.w_memory,
        params=lambda o: {'tasks': o.tasks},
        once=lambda o: not o.memory_repeats,
        report=footprint.memory_report,
    ),
    Scenario(
        'large',
        'results of 1 to 64 MB from another process; 24 MB arriving under load',
        plan=large.large_plan,
        report=large.large_report,
    ),
    Scenario(
        'quorum',
        "result_queue_type='quorum' on one node: round trip, declare, broker memory",
        plan=footprint.quorum_plan,
        report=footprint.quorum_report,
        quick=False,
    ),
    Scenario(
        'e2e',
        'T client threads: send_task -> get() through a worker (pika_rpc / Celery, both sides)',
        plan=e2e.e2e_plan,
        report=e2e.e2e_report,
    ),
    Scenario(
        'first_result',
        "a fresh process's first result: import, connect, declare, send, get",
        plan=e2e.first_result_plan,
        report=e2e.first_result_report,
    ),
    # ------------------------------------------------------------ detail (not by default)
    Scenario(
        'publish',
        'store_result from 64 threads, Link.publish pipelined, wake-ups per publish',
        plan=lambda o: [
            [
                Kind('publish64.pr', publish.w_store, {'impl': 'pr', 'threads': 64, 'n': o.k64}),
                Kind('publish_pipelined.pr', publish.w_pipelined, {'n': o.n}),
                Kind('publish_pipelined_big.pr', publish.w_pipelined, {'n': o.n_big}),
            ]
        ],
        report=publish.publish_report,
        default=False,
        quick=False,
        needs=('store',),
    ),
    Scenario(
        'consume',
        'M messages pre-published: subscribe until all received (reply consumer, '
        'Consumer, raw basic_consume)',
        worker=receive.w_consume,
        params=lambda o: {'m': o.m, 'm_ack': o.m_ack},
        impls=(
            'pr_backend',
            'pr_consumer',
            'pr_consumer_ack',
            'raw_batchack',
            'raw_ackeach',
            'raw_noack',
        ),
        rows=(
            Row(
                'consume: backend reply consumer -> get() ({m:,} msgs) [raw: batched ack]',
                'rate',
                '/s',
                ('pr_backend', 'raw_batchack'),
                'raw: decode + lookup + multiple ack per turn',
            ),
            Row('  same [raw: ack each]', 'rate', '/s', ('pr_backend', 'raw_ackeach')),
            Row(
                '  CPU per message [raw: batched ack]',
                'cpu_us_per_result',
                ' us',
                ('pr_backend', 'raw_batchack'),
            ),
            Row(
                'consume: pika_rpc.Consumer no_ack ({m:,} msgs) [raw: auto_ack]',
                'rate',
                '/s',
                ('pr_consumer', 'raw_noack'),
            ),
            Row('  CPU per message', 'cpu_us_per_result', ' us', ('pr_consumer', 'raw_noack')),
            Row(
                'consume: pika_rpc.Consumer, message.ack() each ({m_ack:,} msgs) [raw: ack each]',
                'rate',
                '/s',
                ('pr_consumer_ack', 'raw_ackeach'),
                'each ack() is a blocking command',
            ),
        ),
        default=False,
        quick=False,
    ),
    Scenario(
        'rtt_detail',
        'rtt split into store and get(); ids not registered first',
        worker=latency.w_pingpong,
        impls=('pr_unregistered',),
        params=lambda o: {'threads': 1, 'iters': o.iters, 'timeout': o.run_timeout},
        report=latency.rtt_detail_report,
        default=False,
        quick=False,
        needs=('rtt',),
    ),
    Scenario(
        'get_seq_detail',
        'get_seq with every result already arrived; raw acking each',
        worker=receive.w_get_seq,
        impls=('pr_arrived', 'raw_ackeach'),
        params=lambda o: {'n': o.seq},
        report=receive.get_seq_detail_report,
        default=False,
        quick=False,
        needs=('get_seq',),
    ),
    Scenario(
        'memory_detail',
        'memory with results stored by a thread of the process; table sizes',
        worker=footprint.w_memory,
        impls=('pr_inproc',),
        params=lambda o: {'tasks': o.tasks},
        once=lambda o: not o.memory_repeats,
        report=footprint.memory_detail_report,
        default=False,
        quick=False,
        needs=('memory',),
    ),
)

BY_NAME: Dict[str, Scenario] = {s.name: s for s in SCENARIOS}


def select(names: Optional[Sequence[str]], quick: bool) -> List[Scenario]:
    """The scenarios to run, in registry order: ``names`` (``all``: every one) and what
    they need; by default those marked ``quick`` (with ``--quick``) or ``default``."""
    if not names:
        chosen = {s.name for s in SCENARIOS if (s.quick if quick else s.default)}
    elif 'all' in names:
        chosen = set(BY_NAME)
    else:
        unknown = set(names) - set(BY_NAME)
        if unknown:
            raise ValueError(f'unknown scenarios: {", ".join(sorted(unknown))}')
        chosen = set(names)
        for name in list(chosen):
            chosen.update(BY_NAME[name].needs)
    return [s for s in SCENARIOS if s.name in chosen]
