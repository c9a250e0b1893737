#!/usr/bin/env python3
"""Run the interop and plug-in tests against each Celery minor version; print a table.

For every version (default 5.5, 5.6, 5.7) this builds a throwaway virtualenv in a temporary
directory holding pika_rpc (``pip install`` of this checkout, no extras), pytest,
pytest-timeout and ``celery>=X.Y,<X.Y+1`` (pip picks the newest patch release and a
matching kombu). The tests are copied next to it so that ``pika_rpc`` is imported from the
installed package, not from the checkout (and the ``pika-rpc://`` result backend's entry
point is registered). Then pytest runs the chosen suites there and a Markdown table of every
test's outcome per version is printed. Suites (``--suites``, default all):

* ``interop``: ``tests/interop`` (pika_rpc and Celery clients and workers on one broker);
* ``plugin``: the Celery plug-in (``result_backend='pika-rpc://'``) with real Celery workers,
  ``tests/integration/test_celery_plugin.py``, and its contract with Celery's internals,
  ``tests/unit/test_celery_backend_contract.py``.

Not part of CI: it downloads packages and takes a few minutes. The broker is found as the
tests find it (``AMQP_URL``, else localhost).

Usage::

    python scripts/interop_matrix.py [--versions 5.5 5.6 5.7] [--suites interop plugin]
        [--keep] [-- PYTEST_ARGS...]

Exit status: 0 when every version passed (skips allowed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VERSIONS = ('5.5', '5.6', '5.7')
SUITES = {
    'interop': ['tests/interop'],
    'plugin': [
        'tests/integration/test_celery_plugin.py',
        'tests/unit/test_celery_backend_contract.py',
    ],
}
SYMBOL = {'passed': 'pass', 'failed': '**FAIL**', 'error': '**ERROR**', 'skipped': 'skip'}


def _next_minor(version: str) -> str:
    major, minor = version.split('.')[:2]
    return f'{major}.{int(minor) + 1}'


def _run(cmd: List[str], log, **kwargs) -> int:
    log.write(f'$ {" ".join(cmd)}\n')
    log.flush()
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, **kwargs).returncode


def build_venv(base: str, version: str, log) -> Tuple[Optional[str], str]:
    """Create the virtualenv; return (its python or None on failure, installed versions)."""
    venv = os.path.join(base, f'venv-celery-{version}')
    if _run([sys.executable, '-m', 'venv', venv], log):
        return None, 'venv failed'
    python = os.path.join(venv, 'bin', 'python')
    spec = f'celery>={version},<{_next_minor(version)}'
    if _run(
        [
            python,
            '-m',
            'pip',
            'install',
            '-q',
            '--disable-pip-version-check',
            ROOT,
            'pytest',
            'pytest-timeout',
            spec,
        ],
        log,
    ):
        return None, f'pip install {spec} failed'
    out = subprocess.run(
        [
            python,
            '-c',
            'import celery, kombu, pika_rpc; print(celery.__version__, '
            'kombu.__version__, pika_rpc.__file__)',
        ],
        capture_output=True,
        text=True,
        cwd=base,
    )  # not the checkout: '' on sys.path would find it there
    celery_v, kombu_v, where = (out.stdout.split() + ['?', '?', '?'])[:3]
    if where.startswith(ROOT):
        return None, f'pika_rpc imported from the checkout ({where}), not the venv'
    return python, f'celery {celery_v}, kombu {kombu_v}'


def run_tests(
    base: str, version: str, python: str, pytest_args: List[str], log, paths: List[str]
) -> Tuple[Dict[str, str], int, float]:
    """Copy the tests next to the venv, run them; return ({test: outcome}, exit code, seconds)."""
    work = os.path.join(base, f'run-{version}')
    shutil.copytree(
        os.path.join(ROOT, 'tests'),
        os.path.join(work, 'tests'),
        ignore=shutil.ignore_patterns('__pycache__'),
    )
    shutil.copy(os.path.join(ROOT, 'setup.cfg'), work)  # pytest's markers and timeout
    junit = os.path.join(work, 'junit.xml')
    env = dict(os.environ, PYTHONPATH=work)
    started = time.monotonic()
    code = _run(
        [
            python,
            '-m',
            'pytest',
            *paths,
            '-q',
            '-p',
            'no:cacheprovider',
            f'--junitxml={junit}',
            '-rs',
            *pytest_args,
        ],
        log,
        cwd=work,
        env=env,
    )
    return parse_junit(junit), code, time.monotonic() - started


def parse_junit(path: str) -> Dict[str, str]:
    outcomes: Dict[str, str] = {}
    if not os.path.exists(path):
        return outcomes
    for case in ET.parse(path).getroot().iter('testcase'):
        module = case.get('classname', '').rsplit('.', 1)[-1]
        name = f'{module}::{case.get("name")}'
        outcome = 'passed'
        for child in case:
            if child.tag in ('failure', 'error', 'skipped'):
                outcome = {'failure': 'failed', 'error': 'error', 'skipped': 'skipped'}[child.tag]
        if outcomes.get(name) not in ('failed', 'error'):  # setup + call may both report
            outcomes[name] = outcome
    return outcomes


def table(versions: List[str], results: Dict[str, Dict[str, str]], details: Dict[str, str]) -> str:
    names = sorted({name for outcome in results.values() for name in outcome})
    lines = [
        '| test | ' + ' | '.join(f'Celery {v}' for v in versions) + ' |',
        '|---|' + '---|' * len(versions),
    ]
    for name in names:
        cells = [SYMBOL.get(results[v].get(name, ''), '-') for v in versions]
        lines.append(f'| `{name}` | ' + ' | '.join(cells) + ' |')
    summary = []
    for v in versions:
        counts: Dict[str, int] = {}
        for outcome in results[v].values():
            counts[outcome] = counts.get(outcome, 0) + 1
        summary.append(', '.join(f'{n} {k}' for k, n in sorted(counts.items())) or 'no results')
    lines.append('| **total** | ' + ' | '.join(summary) + ' |')
    lines.append('| installed | ' + ' | '.join(details[v] for v in versions) + ' |')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--versions',
        nargs='+',
        default=list(DEFAULT_VERSIONS),
        help='Celery minor versions (default: %(default)s)',
    )
    parser.add_argument(
        '--suites',
        nargs='+',
        choices=sorted(SUITES),
        default=sorted(SUITES),
        help='test suites (default: %(default)s)',
    )
    parser.add_argument('--keep', action='store_true', help='keep the temporary directory')
    parser.add_argument('pytest_args', nargs='*', help='extra pytest arguments (after --)')
    args = parser.parse_args(argv)
    base = tempfile.mkdtemp(prefix='pika-rpc-interop-matrix-')
    results: Dict[str, Dict[str, str]] = {}
    details: Dict[str, str] = {}
    ok = True
    try:
        for version in args.versions:
            log_path = os.path.join(base, f'celery-{version}.log')
            print(f'Celery {version}: building the virtualenv ...', file=sys.stderr, flush=True)
            with open(log_path, 'w') as log:
                python, installed = build_venv(base, version, log)
                if python is None:
                    results[version], details[version], ok = {}, installed, False
                    print(f'  {installed}; see {log_path}', file=sys.stderr)
                    continue
                paths = [path for suite in args.suites for path in SUITES[suite]]
                print(f'  {installed}; running {" ".join(paths)} ...', file=sys.stderr, flush=True)
                results[version], code, seconds = run_tests(
                    base, version, python, args.pytest_args, log, paths
                )
            details[version] = f'{installed} ({seconds:.0f} s, exit {code})'
            ok = ok and code == 0
            print(f'  exit {code} in {seconds:.0f} s', file=sys.stderr, flush=True)
            if code:
                with open(log_path) as log:
                    print(log.read()[-4000:], file=sys.stderr)
        print(table(args.versions, results, details))
    finally:
        if args.keep:
            print(f'kept {base}', file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
