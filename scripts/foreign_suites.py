#!/usr/bin/env python3
"""Run other projects' own integration tests against pika_rpc, with only the names swapped.

A *suite* (a row of ``SUITES``) is some test files of a released sdist, the text swaps that
make them use pika_rpc's names instead of the project's (``import kombu`` becomes ``import
pika_rpc as kombu``), and the tests left out, each with its reason. For each suite the
script:

1. downloads the sdist with ``pip download --no-binary :all: --no-deps`` (kept in
   ``--cache``, so a second run is offline);
2. extracts the suite's files into a temporary directory, keeping their paths;
3. applies the swaps. Each swap must match at least once: a release that changed the text
   stops the script, rather than silently running the project's own library;
4. runs pytest there (this interpreter, so ``PYTHONPATH=$PWD`` picks this checkout's
   pika_rpc), against the broker of ``AMQP_URL`` (else ``amqp://guest:guest@localhost//``);
5. prints every collected test as PASS, FAIL, ERROR, SKIP or EXCLUDED (with the reason),
   the first line of each failure, and the count.

Nothing else of the tests is changed: assertions, fixtures and sleeps are the project's. A
swap names a project's API name and the pika_rpc name that stands for it; a module-level
import of something only excluded tests use becomes ``None``, so the module still imports.

Not in CI: it downloads from PyPI, and kombu's tests declare queues and exchanges with fixed
names (``test``, ``direct1``...) on the broker. The suite's ``cleanup`` lists them; they are
deleted before and after the run (kombu's own CI starts from an empty broker), so a run never
sees the messages an earlier one left. Run it against a broker nobody else uses those names
on.

Celery's ``t/integration/test_tasks.py`` (celery 5.7.0) runs three times on the same set
(``_foreign_celery``): ``celery-tasks-baseline`` is Celery's own client against a Celery
worker process (no swaps: the goal to meet), ``celery-tasks`` is pika_rpc as the client
(the tests' ``shared_task`` and the exceptions they expect swapped to pika_rpc's) against the
same Celery worker, and ``celery-tasks-pika-worker`` pika_rpc's client against pika_rpc's
``Worker``. Celery's integration conftest (Redis, a worker inside the test process) is
replaced by one with the fixtures the tests use; tests that need Redis, pydantic, canvas or
an in-process worker are excluded, each with its reason.

Adding a suite: append a ``Suite`` to ``SUITES`` with its sdist, files, swaps, exclusions and
cleanup; ``conftest`` is extra text for the ``conftest.py`` written at the top of the
extracted tree, ``extra_files`` whole files written into it (``_worker/...``: into the
worker's tree, given to the fixtures as ``FOREIGN_WORKER_TREE``), ``worker_files`` and
``worker_swaps`` the project's files (and swaps) copied there, and ``env`` the environment
its fixtures read (``FOREIGN_QUEUE``, if set, is deleted after the run).

Usage::

    PYTHONPATH=$PWD python scripts/foreign_suites.py [SUITE ...] [--keep] [--list]
        [--cache DIR] [-- PYTEST_ARGS...]

Exit status: 0 when every test that is not excluded passed (or was skipped), 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import uuid
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_URL = 'amqp://guest:guest@localhost:5672//'
DEFAULT_CACHE = os.path.join(tempfile.gettempdir(), 'pika-rpc-foreign-sdists')


@dataclasses.dataclass(frozen=True)
class Swap:
    """Replace ``old`` by ``new`` in ``path`` (``'*'``: every file of the suite)."""

    path: str
    old: str
    new: str


@dataclasses.dataclass(frozen=True)
class Suite:
    """One project's test files, run with pika_rpc's names (see the module docstring).

    ``ini`` holds the project's own pytest settings (its ``[tool:pytest]``), minus paths.
    ``exclusions`` maps an ``fnmatch`` pattern of pytest node ids to the reason the tests
    it matches are left out. ``cleanup`` names the queues and exchanges the tests declare
    with fixed names (deleted before and after the run).
    """

    name: str
    project: str
    version: str
    files: Tuple[str, ...]
    tests: Tuple[str, ...]
    swaps: Tuple[Swap, ...]
    exclusions: Dict[str, str]
    cleanup: Tuple[str, ...] = ()
    ini: str = ''
    conftest: str = ''
    env: Callable[[str], Dict[str, str]] = lambda url: {}
    extra_files: Tuple[Tuple[str, str], ...] = ()
    worker_files: Tuple[str, ...] = ()
    worker_swaps: Tuple[Swap, ...] = ()

    @property
    def sdist(self) -> str:
        return f'{self.project}=={self.version}'


def _celery_runs() -> List[Dict[str, str]]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _foreign_celery

    return _foreign_celery.runs()


def _kombu_env(url: str) -> Dict[str, str]:
    # kombu's fixtures read these and build pyamqp://HOST:PORT (guest, vhost '/').
    parts = urlsplit(url.split(';')[0])
    return {
        'RABBITMQ_HOST': parts.hostname or 'localhost',
        'RABBITMQ_5672_TCP': str(parts.port or 5672),
    }


_KOMBU_DIR = 't/integration'
KOMBU = Suite(
    name='kombu',
    project='kombu',
    version='5.7.0',
    files=(
        't/__init__.py',
        f'{_KOMBU_DIR}/__init__.py',
        f'{_KOMBU_DIR}/common.py',
        f'{_KOMBU_DIR}/test_py_amqp.py',
    ),
    tests=(f'{_KOMBU_DIR}/test_py_amqp.py',),
    swaps=(
        Swap('*', '\nimport kombu\n', '\nimport pika_rpc as kombu\n'),
        Swap(
            f'{_KOMBU_DIR}/test_py_amqp.py',
            'from amqp.exceptions import NotFound',
            'from pika_rpc.errors import NotFound',
        ),
        Swap(
            f'{_KOMBU_DIR}/test_py_amqp.py',
            'from kombu.connection import ConnectionPool',
            'from pika_rpc.pools import ConnectionPool',
        ),
        Swap(
            f'{_KOMBU_DIR}/test_py_amqp.py',
            'from kombu.exceptions import OperationalError',
            'from pika_rpc.errors import OperationalError',
        ),
        Swap(
            f'{_KOMBU_DIR}/common.py',
            'from kombu.asynchronous.hub import Hub',
            'Hub = None  # kombu.asynchronous.hub.Hub: only test_PyAMQPEventLoop uses it',
        ),
    ),
    exclusions={
        '*test_PyAMQPEventLoop::*': (
            "drives kombu's asynchronous event loop (kombu.asynchronous.Hub and "
            'Connection.register_with_event_loop, the transport for Celery workers); '
            "pika_rpc's I/O thread is its own event loop and offers none to register with"
        ),
        '*test_PyAMQPConsumerRevive::*': (
            "kills the py-amqp transport's socket (conn.connection.transport.sock): a "
            'transport pika_rpc does not offer (its connection is pika, owned by the I/O '
            'thread; tests/faults cut it with the fault proxy instead)'
        ),
    },
    cleanup=(
        # queues and exchanges kombu's tests name (the simple ones' exchanges share the name)
        'test',
        'test_empty',
        'direct1',
        'rk_direct1',
        'rk_direct2',
        'fanout1',
        'fanout2',
        'topic1',
        'topic2',
        'topic3',
        'ttl_test',
        'priority_test',
        'priority_requeue_test',
        'simple_queue_test',
        'simple_buffer_test',
        'ttl_simple_queue_test',
        'ttl_simple_buffer_test',
        'priority_simple_queue_test',
        'priority_simple_buffer_test',
        'test_ack',
        'test_reject_no_requeue',
        'test_reject_requeue',
        'test_requeue',
        'test_direct',
        'test_rk_direct',
        'test_fanout',
        'test_topic',
        'test_empty_exchange',
    ),
    ini='python_classes = test_*\n',  # kombu's setup.cfg
    env=_kombu_env,
)


def _celery_suite(run: Dict[str, str]) -> Suite:
    import _foreign_celery as fc  # scripts/_foreign_celery.py

    def env(url: str) -> Dict[str, str]:
        return {
            'FOREIGN_CLIENT': run['client'],
            'FOREIGN_WORKER': run['worker'],
            'FOREIGN_BROKER': url.split(';')[0],
            'FOREIGN_QUEUE': f'pika-rpc-foreign-{run["name"]}-{uuid.uuid4().hex[:8]}',
        }

    pydantic = (
        Swap(f'{fc._DIR}/tasks.py', *fc.PYDANTIC),
        Swap(f'{fc._DIR}/tasks.py', *fc.PYDANTIC_TASKS),
    )
    swaps = list(pydantic)
    if run['client'] == 'pika':
        swaps += [Swap(*swap) for swap in fc.PIKA_SWAPS]
    return Suite(
        name=run['name'],
        project='celery',
        version=fc.CELERY_VERSION,
        files=fc.FILES,
        tests=(f'{fc._DIR}/test_tasks.py',),
        swaps=tuple(swaps),
        exclusions=fc.EXCLUSIONS,
        env=env,
        extra_files=(
            (f'{fc._DIR}/conftest.py', fc.CONFTEST),
            ('_worker/_worker_app.py', fc.WORKER_APP),
        ),
        worker_files=fc.WORKER_FILES,
        worker_swaps=pydantic,
        ini='python_classes = test_*\nxfail_strict = true\n',  # celery's pyproject.toml
    )


#: Every suite the script knows, by name.
SUITES: Dict[str, Suite] = {s.name: s for s in (KOMBU, *(_celery_suite(r) for r in _celery_runs()))}

# Written at the top of the extracted tree: records each test's outcome, and leaves out the
# excluded ones (reported, not run).
_CONFTEST = """
import fnmatch, json, os

_EXCLUDE = json.loads(os.environ['FOREIGN_SUITE_EXCLUDE'])
_REPORT = os.environ['FOREIGN_SUITE_REPORT']
_results = {}


def pytest_configure(config):
    config.addinivalue_line('markers', 'env(name): the transport a kombu test is for')
    config.addinivalue_line('markers', 'flaky(reruns, reruns_delay): kombu reruns these')


def pytest_collection_modifyitems(config, items):
    kept, left = [], []
    for item in items:
        reason = next((r for p, r in _EXCLUDE.items() if fnmatch.fnmatch(item.nodeid, p)), None)
        if reason is None:
            kept.append(item)
        else:
            left.append(item)
            _results[item.nodeid] = {'outcome': 'excluded', 'detail': reason}
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept
    for item in kept:
        _results[item.nodeid] = {'outcome': 'not run', 'detail': ''}


def pytest_collectreport(report):
    if report.failed:
        _results[report.nodeid] = {'outcome': 'error', 'detail': _first_line(report)}


def pytest_runtest_logreport(report):
    entry = _results.setdefault(report.nodeid, {'outcome': 'not run', 'detail': ''})
    if report.when == 'call' or report.outcome != 'passed':
        if report.outcome == 'failed':
            outcome = 'failed' if report.when == 'call' else 'error'
            entry.update(outcome=outcome, detail=_first_line(report))
        elif report.outcome == 'skipped':
            entry.update(outcome='skipped', detail=_first_line(report))
        elif entry['outcome'] == 'not run':
            entry.update(outcome='passed', detail='')


def _first_line(report):
    crash = getattr(report.longrepr, 'reprcrash', None)
    if crash is not None:
        return crash.message.splitlines()[0] if crash.message else ''
    text = str(report.longrepr)
    return text.strip().splitlines()[-1] if text.strip() else ''


def pytest_sessionfinish(session):
    with open(_REPORT, 'w') as out:
        json.dump(_results, out, indent=1)
"""

_PYTEST_INI = """[pytest]
addopts = -p no:cacheprovider
timeout = 120
"""


def download(suite: Suite, cache: str) -> str:
    """The sdist's path, downloaded into ``cache`` unless already there."""
    os.makedirs(cache, exist_ok=True)
    prefix = f'{suite.project}-{suite.version}'
    for name in os.listdir(cache):
        if name.startswith(prefix) and name.endswith(('.tar.gz', '.zip')):
            return os.path.join(cache, name)
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-binary', ':all:', '--no-deps']
    subprocess.run(cmd + [suite.sdist, '-d', cache], check=True)
    for name in os.listdir(cache):
        if name.startswith(prefix) and name.endswith('.tar.gz'):
            return os.path.join(cache, name)
    raise SystemExit(f'pip download gave no sdist for {suite.sdist} in {cache}')


def extract(suite: Suite, sdist: str, into: str, files: Sequence[str] = ()) -> None:
    """Write the suite's files (or ``files``) from ``sdist`` under ``into``, paths kept."""
    top = f'{suite.project}-{suite.version}'
    with tarfile.open(sdist) as tar:
        for path in files or suite.files:
            member = tar.extractfile(f'{top}/{path}')
            if member is None:
                raise SystemExit(f'{path} is not a file in {os.path.basename(sdist)}')
            target = os.path.join(into, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, 'wb') as out:
                out.write(member.read())


def apply_swaps(
    suite: Suite, into: str, files: Sequence[str] = (), swaps: Sequence[Swap] = ()
) -> None:
    """Apply every swap; stop when one matches nothing (the sdist changed)."""
    texts = {}
    for path in files or suite.files:
        with open(os.path.join(into, path), encoding='utf-8') as f:
            texts[path] = f.read()
    for swap in swaps or suite.swaps:
        paths = list(texts) if swap.path == '*' else [swap.path]
        hits = 0
        for path in paths:
            hits += texts[path].count(swap.old)
            texts[path] = texts[path].replace(swap.old, swap.new)
        if not hits:
            raise SystemExit(f'{suite.name}: swap {swap.old!r} matches nothing in {swap.path}')
    for path, text in texts.items():
        with open(os.path.join(into, path), 'w', encoding='utf-8') as f:
            f.write(text)


def cleanup(url: str, names: Sequence[str]) -> None:
    """Delete the queues and exchanges of these names, where they exist (pika, one channel
    per delete: a refusal closes only its channel)."""
    if not names:
        return
    import pika  # pika_rpc's one dependency

    parts = urlsplit(url.split(';')[0])
    vhost = parts.path[1:] if parts.path.startswith('/') else parts.path
    params = pika.ConnectionParameters(
        host=parts.hostname or 'localhost',
        port=parts.port or 5672,
        virtual_host={'': '/', '/': '/'}.get(vhost, vhost),
        credentials=pika.PlainCredentials(parts.username or 'guest', parts.password or 'guest'),
    )
    with pika.BlockingConnection(params) as conn:
        for name in names:
            for delete in ('queue_delete', 'exchange_delete'):
                channel = conn.channel()
                try:
                    getattr(channel, delete)(name)
                    channel.close()
                except pika.exceptions.AMQPError:
                    pass


def run_suite(suite: Suite, args: argparse.Namespace, url: str) -> Tuple[int, int, int]:
    """Run one suite; print its table. Returns (passed, run, excluded)."""
    sdist = download(suite, args.cache)
    work = tempfile.mkdtemp(prefix=f'foreign-{suite.name}-')
    try:
        extract(suite, sdist, work)
        apply_swaps(suite, work)
        worker_tree = os.path.join(work, '_worker')
        if suite.worker_files:
            extract(suite, sdist, worker_tree, suite.worker_files)
            apply_swaps(suite, worker_tree, suite.worker_files, suite.worker_swaps)
        for path, text in suite.extra_files:
            target = os.path.join(work, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, 'w', encoding='utf-8') as f:
                f.write(textwrap.dedent(text))
        with open(os.path.join(work, 'conftest.py'), 'w') as f:
            f.write(_CONFTEST + textwrap.dedent(suite.conftest))
        with open(os.path.join(work, 'pytest.ini'), 'w') as f:
            f.write(_PYTEST_INI + suite.ini)
        report = os.path.join(work, 'report.json')
        suite_env = suite.env(url)
        env = dict(os.environ, **suite_env)
        env['FOREIGN_WORKER_TREE'] = worker_tree
        queues = [suite_env['FOREIGN_QUEUE']] if 'FOREIGN_QUEUE' in suite_env else []
        env['PYTHONPATH'] = os.pathsep.join(
            p for p in (ROOT, work, os.environ.get('PYTHONPATH', '')) if p
        )
        env['FOREIGN_SUITE_EXCLUDE'] = json.dumps(suite.exclusions)
        env['FOREIGN_SUITE_REPORT'] = report
        cleanup(url, suite.cleanup)
        cmd = [sys.executable, '-m', 'pytest', '-q', *suite.tests, *args.pytest_args]
        print(f'== {suite.name}: {suite.sdist} {" ".join(suite.tests)} (in {work})', flush=True)
        log_path = os.path.join(work, 'pytest.log')
        with open(log_path, 'w') as log:
            subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        cleanup(url, [*suite.cleanup, *queues])
        if not os.path.exists(report):
            with open(log_path) as log:
                print(log.read())
            raise SystemExit(f'{suite.name}: pytest wrote no report')
        with open(report) as f:
            results = json.load(f)
        return _print_table(suite, results)
    finally:
        if args.keep:
            print(f'   kept: {work}')
        else:
            shutil.rmtree(work, ignore_errors=True)


_LABEL = {
    'passed': 'PASS',
    'failed': 'FAIL',
    'error': 'ERROR',
    'skipped': 'SKIP',
    'excluded': 'EXCLUDED',
    'not run': 'NOT RUN',
}


def _print_table(suite: Suite, results: Dict[str, dict]) -> Tuple[int, int, int]:
    counts: Dict[str, int] = {}
    for nodeid in sorted(results):
        entry = results[nodeid]
        outcome = entry['outcome']
        counts[outcome] = counts.get(outcome, 0) + 1
        line = f'{_LABEL[outcome]:9} {nodeid}'
        if outcome != 'passed' and entry['detail']:
            line += f'\n          {entry["detail"][:300]}'
        print(line)
    excluded = counts.get('excluded', 0)
    run = len(results) - excluded
    passed = counts.get('passed', 0)
    print(
        f'== {suite.name}: {passed} of {run} run passed; {excluded} excluded; '
        f'{len(results)} collected ({", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))})'
    )
    return passed, run, excluded


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('suites', nargs='*', help=f'suites to run (default all: {list(SUITES)})')
    parser.add_argument('--keep', action='store_true', help='keep the extracted tree')
    parser.add_argument('--list', action='store_true', help='list the suites and exclusions')
    parser.add_argument('--cache', default=DEFAULT_CACHE, help='where sdists are kept')
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = argv[argv.index('--') + 1 :] if '--' in argv else []
    args = parser.parse_args(argv[: argv.index('--')] if '--' in argv else argv)
    args.pytest_args = pytest_args
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f'unknown suite(s) {unknown}; known: {list(SUITES)}')
    chosen = [SUITES[s] for s in args.suites or SUITES]
    if args.list:
        for suite in chosen:
            print(f'{suite.name}: {suite.sdist} {" ".join(suite.tests)}')
            for pattern, reason in suite.exclusions.items():
                print(f'  excluded {pattern}: {reason}')
        return 0
    url = os.environ.get('AMQP_URL') or DEFAULT_URL
    failed = False
    for suite in chosen:
        passed, run, _ = run_suite(suite, args, url)
        failed = failed or passed < run
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
