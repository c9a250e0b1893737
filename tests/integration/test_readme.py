"""README.rst's promises: its Python blocks run, its demo command works.

* Every ``.. code-block:: python`` block of README.rst is either run or checked:
  - a block whose first line is ``# examples/<path>`` is an excerpt of that file and must
    appear in it verbatim (those files run under ``test_django_servers.py``);
  - every other block runs, in README order, as one script in a subprocess, with the run's
    broker for ``amqp://guest:guest@localhost:5672//`` and a queue of this test for
    ``celery``. A ``print(...)`` whose line ends with ``# text`` must print ``text``.
* ``python scripts/demo.py`` exits 0 and prints its table.
* ``python scripts/bench.py --help`` describes the benchmark and every scenario, and
  ``--list`` names what a run would do (neither needs a broker).

The test command is proved by CI itself; Docker lines are not run.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from typing import Any, List, Tuple

import pytest

from tests.integration.web_support import REPO, subprocess_env
from tests.integration.worker_support import delete_queue

README = REPO / 'README.rst'
README_URL = 'amqp://guest:guest@localhost:5672//'
_DIRECTIVE = re.compile(r'^(?P<indent>\s*)\.\. code-block:: python\s*$')
_EXCERPT = re.compile(r'^# (?P<path>examples/\S+)$')

# Runs before the README blocks: an App made without a queue uses this test's queue.
PRELUDE = """
import pika_rpc
_App = pika_rpc.App
class App(_App):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault('task_default_queue', {queue!r})
        super().__init__(*args, **kwargs)
pika_rpc.App = App
"""


def python_blocks(text: str) -> List[Tuple[int, str]]:
    """``[(line number, dedented code)]`` of every ``.. code-block:: python`` block."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        i += 1
        if not match:
            continue
        indent = len(match.group('indent'))
        start, body = i, []
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            body.append(lines[i])
            i += 1
        blocks.append((start + 1, textwrap.dedent('\n'.join(body)).strip('\n') + '\n'))
    return blocks


def expected_prints(code: str) -> List[str]:
    """The ``# text`` comments of ``print(...)`` lines, in order."""
    out = []
    for line in code.splitlines():
        stripped = line.strip()
        if stripped.startswith('print(') and '#' in stripped:
            out.append(stripped.rsplit('#', 1)[1].strip())
    return out


def test_the_readme_has_python_blocks_and_each_is_valid_python():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 5
    for line, code in blocks:
        ast.parse(code, filename=f'README.rst:{line}')


@pytest.mark.parametrize(
    'line,code',
    [
        pytest.param(line, code, id=f'README.rst:{line}')
        for line, code in python_blocks(README.read_text())
        if _EXCERPT.match(code.splitlines()[0])
    ],
)
def test_a_readme_excerpt_is_in_its_file_verbatim(line: int, code: str) -> None:
    first, _, rest = code.partition('\n')
    path = REPO / _EXCERPT.match(first).group('path')
    assert path.is_file(), f'README.rst:{line} names {path}, which does not exist'
    assert rest.strip('\n') in path.read_text(), (
        f'README.rst:{line}: this excerpt is not in {path} verbatim (update one or the other)'
    )


def test_the_readme_python_blocks_run_in_order_and_print_what_they_say(
    amqp_url: str, unique_name: str, tmp_path
) -> None:
    runnable = [
        (line, code)
        for line, code in python_blocks(README.read_text())
        if not _EXCERPT.match(code.splitlines()[0])
    ]
    assert runnable
    script = [PRELUDE.format(queue=unique_name)]
    expected: List[str] = []
    for line, code in runnable:
        assert README_URL in code or 'App(' not in code, (
            f'README.rst:{line}: an App with another broker URL than {README_URL}'
        )
        code = code.replace(repr(README_URL), repr(amqp_url)).replace("'celery'", repr(unique_name))
        script.append(f'# ---- README.rst:{line}\n{code}')
        expected.extend(expected_prints(code))
    run_as_one_script(tmp_path / 'readme_blocks.py', script, expected, amqp_url, unique_name)


def run_as_one_script(
    path: Any, script: List[str], expected: List[str], amqp_url: str, queue: str
) -> None:
    """Write ``script`` to ``path``, run it in a fresh interpreter (its task queue deleted
    afterwards) and check it ends well, printing ``expected`` and nothing else."""
    path.write_text('\n'.join(script))
    try:
        proc = subprocess.run(
            [sys.executable, str(path)],
            capture_output=True,
            text=True,
            timeout=100,
            cwd=str(path.parent),
            env=subprocess_env(),
        )
    finally:
        delete_queue(amqp_url, queue)
    report = f'script {path}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}'
    assert proc.returncode == 0, report
    assert proc.stdout.splitlines() == expected, report


def test_the_demo_command_runs_and_prints_its_table(amqp_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, 'scripts/demo.py'],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
        env=subprocess_env(AMQP_URL=amqp_url),
    )
    report = f'stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}'
    assert proc.returncode == 0, report
    assert re.search(r'^task\s+result\s+detail$', proc.stdout, re.M), report
    for row in ('add(2, 3)', 'boom(...)', 'group of 10 x add', 'stopped cleanly: True'):
        assert row in proc.stdout, report


def test_the_bench_command_describes_every_scenario_in_its_help() -> None:
    proc = subprocess.run(
        [sys.executable, 'scripts/bench.py', '--help'],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
        env=subprocess_env(),
    )
    report = f'stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}'
    assert proc.returncode == 0, report
    assert proc.stdout.startswith('usage: python scripts/bench.py'), report
    for flag in ('--quick', '--scenarios', '--repeats', '--threads', '--large-sizes'):
        assert flag in proc.stdout, report
    for name in (
        'store',
        'get_seq',
        'rtt',
        'threads',
        'threads_rtt',
        'poll',
        'resources',
        'memory',
        'large',
        'publish',
        'consume',
    ):
        assert re.search(rf'^  {name} +\S', proc.stdout, re.M), f'{name} missing\n{report}'


def test_the_bench_command_lists_the_runs_of_the_quick_subset() -> None:
    proc = subprocess.run(
        [sys.executable, 'scripts/bench.py', '--quick', '--list'],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
        env=subprocess_env(),
    )
    report = f'stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}'
    assert proc.returncode == 0, report
    kinds = [line.split()[0] for line in proc.stdout.splitlines()]
    assert 'rtt.pr' in kinds and 'threads8.celery' in kinds, report
    assert 'threads64.pr' not in kinds and 'publish64.pr' not in kinds, report
