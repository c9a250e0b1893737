"""The harness: runs, in fresh processes, interleaved; what a worker measures with.

Driver side: every *kind* (one implementation in one scenario, e.g. ``threads8.pr``) runs in
a fresh interpreter (``scripts/bench.py --worker KIND ...``), so no run inherits another's
threads, caches or heap. ``interleave`` runs every kind ``repeats`` times, the kinds of a
group in an order rotated each round (machine noise hits every implementation alike, and
each takes its turn going first); the report shows medians.

Queue bookkeeping: a worker prints ``{"queue": NAME}`` before it uses a queue, and
``{"result": {...}}`` at the end, one JSON line each on stdout. The driver deletes every
queue a worker announced once it ended, even a crashed one, and checks at the end of the
suite that none is left (``queues_left``).

Worker side: ``Stopwatch`` (wall and process CPU: every thread of the process, the I/O
thread included), ``Threads`` (T threads set up, then started together; which ones hang),
``percentiles`` and ``rss_kb``.

Only the standard library is imported here: a worker pays for pika, pika_rpc or Celery
when its scenario imports them (the memory scenario reads RSS from the start).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(SCRIPTS)
ENTRY = os.path.join(SCRIPTS, 'bench.py')

#: A worker: ``(params, broker url) -> result``; runs in a fresh process, returns JSON data.
Worker = Callable[[Dict[str, Any], str], Dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Kind:
    """One measured thing: ``worker(params, url)`` in a fresh process per run.

    ``name`` is ``SCENARIO[VARIANT].IMPL`` (``store8.raw_confirm``): the report finds a
    column's runs by it. ``once``: run in a single round (after the repeated ones).
    """

    name: str
    worker: Worker
    params: Dict[str, Any]
    once: bool = False

    @property
    def impl(self) -> str:
        return self.name.split('.', 1)[1]

    def spec(self) -> Dict[str, Any]:
        """The params as the worker process gets them (``worker``: where to import it)."""
        return dict(self.params, worker=f'{self.worker.__module__}:{self.worker.__name__}')

    def timeout(self) -> float:
        """Bound of one run: its own timeout and idle time plus set-up and tear-down."""
        p = self.params
        return (
            float(p.get('timeout') or 0)
            + float(p.get('idle') or 0)
            + 120.0
            + (p.get('tasks') or 0) / 500.0
        )


def child_env() -> Dict[str, str]:
    """The environment of a child process: the repository root first on ``PYTHONPATH``."""
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))


def loadavg() -> str:
    """1-minute load average (other work on this machine skews every figure)."""
    try:
        return f'{os.getloadavg()[0]:.2f}'
    except OSError:
        return 'n/a'


def rabbitmqctl_json(*args: str) -> List[Dict[str, Any]]:
    """``rabbitmqctl -q ARGS --formatter json``; ``RuntimeError`` when it fails."""
    out = subprocess.run(
        ['rabbitmqctl', '-q', *args, '--formatter', 'json'],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f'rabbitmqctl {" ".join(args)}: {out.stderr.strip()[-300:]}')
    return json.loads(out.stdout or '[]')


# ---------------------------------------------------------------------- worker side
_announced: List[str] = []
_announced_url: List[str] = []


def announce_queue(name: str, url: str) -> None:
    """Tell the driver about a queue before using it; it deletes it after the run.

    A worker run by hand deletes its own at interpreter exit.
    """
    sys.stdout.write(json.dumps({'queue': name}) + '\n')
    sys.stdout.flush()
    if not _announced:
        import atexit

        atexit.register(_delete_announced)
    if not _announced_url:
        _announced_url.append(url)
    _announced.append(name)


def _delete_announced() -> None:
    from .rawpika import delete_queues

    try:
        delete_queues(_announced_url[0], _announced)
    except Exception as exc:  # report, never hide
        sys.stderr.write(f'warning: could not delete {_announced}: {exc}\n')


def worker_main(kind: str, params: Dict[str, Any], url: str) -> None:
    """Run one kind in this process and print its result (``--worker``)."""
    module, name = params['worker'].split(':')
    result = getattr(importlib.import_module(module), name)(params, url)
    sys.stdout.write(json.dumps({'result': result}) + '\n')
    sys.stdout.flush()
    if 'celery' in kind or result.get('hangs'):
        sys.stderr.flush()
        os._exit(0)  # a hung thread (or Celery's connections) must not block the exit


class Stopwatch:
    """Wall seconds and process CPU seconds (all threads) since it was made."""

    def __init__(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def read(self) -> Tuple[float, float]:
        """``(elapsed, cpu)`` seconds so far."""
        return time.perf_counter() - self.t0, time.process_time() - self.c0


class Threads:
    """T threads: ``setup(i)`` each, then ``body(i)`` all together once ``go()`` is called.

    ``setup_out[i]`` is what ``setup(i)`` returned; an exception of a thread is counted in
    ``errors`` (its text), never raised; ``join(deadline)`` tells how many still run.
    """

    def __init__(
        self,
        threads: int,
        setup: Callable[[int], Any],
        body: Callable[[int], None],
        setup_timeout: float = 120.0,
    ) -> None:
        self.setup_out: List[Any] = [None] * threads
        self.errors: List[str] = []
        self._all_set_up = threading.Barrier(threads + 1, timeout=setup_timeout)
        self._go = threading.Event()
        self.pool = [
            threading.Thread(target=self._run, args=(i, setup, body), daemon=True)
            for i in range(threads)
        ]
        for t in self.pool:
            t.start()
        self._all_set_up.wait()  # every thread set up

    def _run(self, i: int, setup: Callable[[int], Any], body: Callable[[int], None]) -> None:
        ok = True
        try:
            self.setup_out[i] = setup(i)
        except BaseException as exc:  # noqa: B902 - counted
            self.errors.append(f'setup {i}: {exc!r}'[:300])
            ok = False
        try:
            self._all_set_up.wait()
        except threading.BrokenBarrierError:
            return
        self._go.wait()
        if ok:
            try:
                body(i)
            except BaseException as exc:  # noqa: B902 - counted
                self.errors.append(f'thread {i}: {exc!r}'[:300])

    def go(self) -> None:
        self._go.set()

    def join(self, deadline: Optional[float]) -> int:
        """Wait until ``deadline`` (monotonic; None: until all ended); return how many
        threads are still running."""
        for t in self.pool:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return sum(t.is_alive() for t in self.pool)


def run_threads(threads: int, work: Callable[[int], None]) -> Tuple[float, float]:
    """``work(i)`` in ``threads`` threads started together; ``(elapsed, cpu)`` seconds.

    The first error of a thread is raised once all ended.
    """
    group = Threads(threads, lambda i: None, work)
    clock = Stopwatch()
    group.go()
    group.join(None)
    elapsed_cpu = clock.read()
    if group.errors:
        raise RuntimeError(group.errors[0])
    return elapsed_cpu


def percentiles(lat: Sequence[float]) -> Dict[str, float]:
    """p50/p90/p99/max/mean in microseconds of latencies given in seconds."""
    lat = sorted(lat)
    if not lat:
        return {}
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6
    return {
        'p50_us': pick(0.50),
        'p90_us': pick(0.90),
        'p99_us': pick(0.99),
        'max_us': lat[-1] * 1e6,
        'mean_us': statistics.fmean(lat) * 1e6,
    }


def rss_kb() -> int:
    """VmRSS of this process in kB (from /proc/self/status)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return -1


# ---------------------------------------------------------------------- driver side
DELETED_QUEUES: List[str] = []  # every queue a worker announced (and the driver deleted)


def run_worker(kind: Kind, url: str) -> Dict[str, Any]:
    """Run ``kind`` once in a fresh interpreter; delete every queue it announced.

    ``RuntimeError`` (with the end of its stderr) when it fails or outlives its timeout.
    """
    from .rawpika import delete_queues

    cmd = [
        sys.executable,
        ENTRY,
        '--worker',
        kind.name,
        '--params',
        json.dumps(kind.spec()),
        '--url',
        url,
    ]
    timeout = kind.timeout()
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            env=child_env(),
        )
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or '')
        err, rc = f'timed out after {timeout} s', -1
    queues: List[str] = []
    result: Optional[Dict[str, Any]] = None
    for line in out.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if 'queue' in item:
            queues.append(item['queue'])
        elif 'result' in item:
            result = item['result']
    try:
        delete_queues(url, queues)
    except Exception as exc:  # report, never hide
        sys.stderr.write(f'warning: could not delete queues {queues}: {exc}\n')
    DELETED_QUEUES.extend(queues)
    if result is None or rc != 0:
        raise RuntimeError(f'worker {kind.name} failed (rc={rc}):\n{err[-3000:]}')
    return result


def interleave(
    groups: Sequence[Sequence[Kind]],
    repeats: int,
    url: str,
    log: Callable[[str], None],
    retries: int = 1,
) -> Dict[str, List[Dict]]:
    """Run every kind ``repeats`` times; returns kind name -> its runs' results.

    Each round runs the groups in turn, a group's kinds in an order rotated by the round.
    A failed run is retried ``retries`` times (the broker may restart under us), then kept
    as ``{'error': ...}`` and the suite goes on.
    """
    runs: Dict[str, List[Dict]] = {k.name: [] for g in groups for k in g}
    total, done, t_start = repeats * len(runs), 0, time.monotonic()
    for r in range(repeats):
        for group in groups:
            shift = r % len(group)
            for kind in list(group[shift:]) + list(group[:shift]):
                t0 = time.monotonic()
                res = _run_with_retries(kind, url, retries, log, f'round {r + 1}/{repeats}')
                runs[kind.name].append(res)
                done += 1
                spent = time.monotonic() - t_start
                log(
                    f'  [{done}/{total}, {spent:4.0f} s, eta {spent / done * (total - done):4.0f}'
                    f' s] round {r + 1}/{repeats} {kind.name:<28} {time.monotonic() - t0:5.1f} s'
                    f'  {_short(res)}'
                )
    return runs


def _run_with_retries(
    kind: Kind, url: str, retries: int, log: Callable[[str], None], where: str
) -> Dict[str, Any]:
    last = ''
    for attempt in range(retries + 1):
        try:
            return run_worker(kind, url)
        except RuntimeError as exc:
            last = str(exc)
            log(
                f'  {where} {kind.name}: attempt {attempt + 1} failed: '
                f'{last.strip().splitlines()[-1] if last.strip() else last}'
            )
    return {'error': last[-2000:]}


def _short(res: Dict[str, Any]) -> str:
    if 'error' in res:
        return 'FAILED'
    keys = [k for k in ('rate', 'p50_us', 'p99_us', 'rss_growth_kb', 'errors', 'hangs') if k in res]
    return ' '.join(
        f'{k}={res[k]:.1f}' if isinstance(res[k], float) else f'{k}={res[k]}' for k in keys
    )


def median_of(runs: Iterable[Dict], key: str) -> Optional[float]:
    """Median of ``key`` over the runs that have it (failed runs have none)."""
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def queues_left(names: Iterable[str]) -> Optional[List[str]]:
    """Which of ``names`` still exist on the broker (``rabbitmqctl``; None without it)."""
    try:
        existing = {q['name'] for q in rabbitmqctl_json('list_queues', 'name')}
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired):
        return None
    return sorted(set(names) & existing)
