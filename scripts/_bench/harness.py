"""The harness: runs, in fresh processes, interleaved; what a worker measures with.

Driver side: every *kind* (one implementation in one scenario, e.g. ``threads8.pr``) runs in
a fresh interpreter (``scripts/bench.py --worker KIND ...``), so no run inherits another's
threads, caches or heap. ``interleave`` runs every kind ``repeats`` times, the kinds of a
group in an order rotated each round (machine noise hits every implementation alike, and
each takes its turn going first); the report shows medians.

Queue bookkeeping: a worker prints ``{"queue": NAME}`` before it uses a queue (and
``{"exchange": NAME}`` before it declares one), and ``{"result": {...}}`` at the end, one
JSON line each on stdout. The driver deletes every queue and exchange a worker announced
once it ended, even a crashed one, and checks at the end of the suite that no queue is left
(``queues_left``).

Services: a kind may need something running for its whole scenario (``Kind.service``: a
task worker every run of ``first_result`` sends to). The driver starts it before the first
run that needs it, passes what it says (a queue name) into the params of each run, and
stops it once ``interleave`` is done.

Worker side: ``Stopwatch`` (wall and process CPU: every thread of the process, the I/O
thread included), ``Threads`` (T threads set up, then started together; which ones hang),
``percentiles``, ``rss_kb``, and what ``/proc`` says of other processes (``tree_cpu``: CPU
of a process and its children; ``broker_sockets``: their TCP connections to the broker).

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


class Service:
    """Something the driver keeps running for the runs of a scenario (see the module
    docstring): ``params`` go into each run's params; ``stop()`` ends it."""

    params: Dict[str, Any] = {}

    def stop(self) -> None:
        raise NotImplementedError


#: Starts a service: ``(broker url) -> Service`` (ready on return).
ServiceStarter = Callable[[str], Service]


@dataclasses.dataclass(frozen=True)
class Kind:
    """One measured thing: ``worker(params, url)`` in a fresh process per run.

    ``name`` is ``SCENARIO[VARIANT].IMPL`` (``store8.raw_confirm``): the report finds a
    column's runs by it. ``once``: run in a single round (after the repeated ones).
    ``service``: started by the driver before the first run of a kind that names it (kinds
    naming the same starter share one), its ``params`` added to every run's.
    """

    name: str
    worker: Worker
    params: Dict[str, Any]
    once: bool = False
    service: Optional[ServiceStarter] = None

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


def compile_package() -> bool:
    """Byte-compile the repository's ``pika_rpc`` (``__pycache__``, ignored by git), as
    ``pip install`` does for pika and Celery: without it a fresh process with
    ``PYTHONDONTWRITEBYTECODE`` set compiles every pika_rpc module from source in every run,
    which ``first_result`` would count as import time. False when it could not be done."""
    import compileall

    try:
        return bool(compileall.compile_dir(os.path.join(ROOT, 'pika_rpc'), quiet=2))
    except OSError:
        return False


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


def announce_exchange(name: str) -> None:
    """Tell the driver about an exchange before declaring it; it deletes it after the run
    (a worker run by hand leaves it)."""
    sys.stdout.write(json.dumps({'exchange': name}) + '\n')
    sys.stdout.flush()


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


def rss_kb(pid: Any = 'self') -> int:
    """VmRSS of a process (default: this one) in kB (from /proc/PID/status); -1 if gone."""
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


_TICKS = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100


def _stat(pid: int) -> List[str]:
    """Fields of /proc/PID/stat after the command name (field 3 is index 0)."""
    with open(f'/proc/{pid}/stat') as f:
        return f.read().rsplit(')', 1)[1].split()


def tree_pids(pid: int) -> List[int]:
    """``pid`` and every process descended from it (Celery's prefork children), from /proc."""
    parents: Dict[int, int] = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat(int(entry))[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        out += frontier
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) of ``pid`` and its descendants so far
    (/proc/PID/stat utime + stime); children that ended are not counted."""
    return sum(process_cpu(p) or 0.0 for p in tree_pids(pid))


def broker_pid() -> Optional[int]:
    """The RabbitMQ server on this machine: the longest-running ``beam.smp`` (rabbitmqctl
    runs short-lived ones too); None when there is none (a remote or docker broker)."""
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/comm') as f:
                if f.read().strip() != 'beam.smp':
                    continue
            found.append((int(_stat(int(entry))[19]), int(entry)))  # starttime
        except (OSError, IndexError, ValueError):
            continue
    return min(found)[1] if found else None


def process_cpu(pid: Optional[int]) -> Optional[float]:
    """CPU seconds of one process (every thread) so far; None when unknown."""
    if pid is None:
        return None
    try:
        fields = _stat(pid)
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


def broker_sockets(pids: Iterable[int], port: int) -> Dict[int, int]:
    """Established TCP connections to ``port`` held by each process (the management-free
    count of broker connections: /proc/PID/fd socket inodes matched in /proc/net/tcp*)."""
    remote: Dict[str, int] = {}  # inode -> remote port, established sockets only
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == '01':  # ESTABLISHED
                        remote[cols[9]] = int(cols[2].rsplit(':', 1)[1], 16)
        except OSError:
            continue
    out = {}
    for pid in pids:
        count = 0
        try:
            fds = os.listdir(f'/proc/{pid}/fd')
        except OSError:
            out[pid] = 0
            continue
        for fd in fds:
            try:
                target = os.readlink(f'/proc/{pid}/fd/{fd}')
            except OSError:
                continue
            if target.startswith('socket:[') and remote.get(target[8:-1]) == port:
                count += 1
        out[pid] = count
    return out


# ---------------------------------------------------------------------- driver side
DELETED_QUEUES: List[str] = []  # every queue a worker announced (and the driver deleted)


def run_worker(kind: Kind, url: str, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run ``kind`` once in a fresh interpreter (``extra``: added to its params); delete
    every queue and exchange it announced.

    ``RuntimeError`` (with the end of its stderr) when it fails or outlives its timeout.
    """
    from .rawpika import delete_exchanges, delete_queues

    cmd = [
        sys.executable,
        ENTRY,
        '--worker',
        kind.name,
        '--params',
        json.dumps(dict(kind.spec(), **(extra or {}))),
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
    exchanges: List[str] = []
    result: Optional[Dict[str, Any]] = None
    for line in out.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if not isinstance(item, dict):
            continue
        if 'queue' in item:
            queues.append(item['queue'])
        elif 'exchange' in item:
            exchanges.append(item['exchange'])
        elif 'result' in item:
            result = item['result']
    try:
        delete_queues(url, queues)
        delete_exchanges(url, exchanges)
    except Exception as exc:  # report, never hide
        sys.stderr.write(
            f'warning: could not delete queues {queues} / exchanges {exchanges}: {exc}\n'
        )
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
    as ``{'error': ...}`` and the suite goes on. The services the kinds need run from the
    first run that needs each until the last round is done.
    """
    runs: Dict[str, List[Dict]] = {k.name: [] for g in groups for k in g}
    total, done, t_start = repeats * len(runs), 0, time.monotonic()
    services = _Services(url, log)
    try:
        for r in range(repeats):
            for group in groups:
                shift = r % len(group)
                for kind in list(group[shift:]) + list(group[:shift]):
                    t0 = time.monotonic()
                    extra = services.params(kind)
                    if 'service_error' in extra:
                        res: Dict[str, Any] = {'error': extra['service_error']}
                    else:
                        where = f'round {r + 1}/{repeats}'
                        res = _run_with_retries(kind, url, retries, log, where, extra)
                    runs[kind.name].append(res)
                    done += 1
                    spent = time.monotonic() - t_start
                    log(
                        f'  [{done}/{total}, {spent:4.0f} s, eta '
                        f'{spent / done * (total - done):4.0f} s] round {r + 1}/{repeats} '
                        f'{kind.name:<28} {time.monotonic() - t0:5.1f} s  {_short(res)}'
                    )
    finally:
        services.stop()
    return runs


class _Services:
    """The services of ``interleave``'s kinds: started on first use, stopped at the end."""

    def __init__(self, url: str, log: Callable[[str], None]) -> None:
        self.url, self.log = url, log
        self.running: Dict[ServiceStarter, Any] = {}

    def params(self, kind: Kind) -> Dict[str, Any]:
        """What ``kind``'s service adds to its params (``{}`` without one); ``{'service_error':
        ...}`` when it could not start (each run that needs it then fails with that)."""
        start = kind.service
        if start is None:
            return {}
        if start not in self.running:
            t0 = time.monotonic()
            try:
                self.running[start] = start(self.url)
                self.log(f'  service {start.__name__} started in {time.monotonic() - t0:.1f} s')
            except Exception as exc:  # the runs that need it fail with this; the suite goes on
                self.running[start] = {'service_error': f'{start.__name__}: {exc}'[-2000:]}
                self.log(f'  service {start.__name__} could not start: {exc}')
        service = self.running[start]
        return service.params if isinstance(service, Service) else service

    def stop(self) -> None:
        for service in self.running.values():
            if isinstance(service, Service):
                try:
                    service.stop()
                except Exception as exc:  # report, never hide
                    self.log(f'  could not stop service {service!r}: {exc}')


def _run_with_retries(
    kind: Kind,
    url: str,
    retries: int,
    log: Callable[[str], None],
    where: str,
    extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    last = ''
    for attempt in range(retries + 1):
        try:
            return run_worker(kind, url, extra)
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
    if 'unsupported' in res:
        return f'not available: {res["unsupported"]}'[:100]
    keys = [
        k
        for k in ('rate', 'p50_us', 'p99_us', 'wall_ms', 'rss_growth_kb', 'errors', 'hangs')
        if k in res
    ]
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
