"""The docs' promises: every Python example of ``docs/*.rst`` runs, or says why not.

The rules of README.rst's examples (``test_readme.py``), for each page of the docs:

* a ``.. code-block:: python`` block whose first line is ``# examples/<path>`` or
  ``# scripts/<path>`` is an excerpt of that file and must appear in it verbatim;
* a block preceded by the comment ``.. not-run: <reason>`` (invisible in the built docs) is
  only parsed: for what cannot run in a test process (a Django settings file, a gunicorn
  config, a Celery worker's command line). The reason is required;
* every other block of a page runs, in page order, as one script in a subprocess, with the
  run's broker for ``amqp://guest:guest@localhost:5672//`` and a queue of this test for
  ``celery``. A ``print(...)`` whose line ends with ``# text`` must print ``text``, and
  nothing else may be printed;
* a page holding the comment ``.. example-requires: <module>`` runs only where that module
  imports; elsewhere its run is skipped, naming the module (for a page written before its
  module landed).

Besides: every exception class of ``pika_rpc/errors.py`` has a section in ``errors.rst``, and
the module map of ``design.rst`` lists every module at its level in ``test_layers.LEVELS``.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple, Optional

import pytest

from tests.integration.test_readme import (
    PRELUDE,
    README_URL,
    expected_prints,
    python_blocks,
    run_as_one_script,
)
from tests.integration.web_support import REPO, subprocess_env
from tests.integration.worker_support import delete_queue

DOCS = REPO / 'docs'
PAGES = sorted(DOCS.glob('*.rst'))
_EXCERPT = re.compile(r'^# (?P<path>(?:examples|scripts)/\S+)$')
_NOT_RUN = re.compile(r'^\s*\.\. not-run:(?P<reason>.*)$')
_REQUIRES = re.compile(r'^\.\. example-requires:\s*(?P<module>\S+)\s*$', re.M)


class Block(NamedTuple):
    page: Path
    line: int
    code: str
    not_run: Optional[str]  # the reason, when the block is only parsed

    @property
    def where(self) -> str:
        return f'docs/{self.page.name}:{self.line}'

    @property
    def excerpt_of(self) -> Optional[Path]:
        match = _EXCERPT.match(self.code.splitlines()[0])
        return REPO / match.group('path') if match else None


def blocks_of(page: Path) -> List[Block]:
    text = page.read_text()
    lines = text.splitlines()
    out = []
    for line, code in python_blocks(text):
        reason = None
        i = line - 3  # 0-based index of the line before the directive
        while i >= 0 and not lines[i].strip():
            i -= 1
        if i >= 0:
            match = _NOT_RUN.match(lines[i])
            if match:
                reason = match.group('reason').strip()
        out.append(Block(page, line, code, reason))
    return out


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]
RUN_PAGES = [
    page
    for page in PAGES
    if any(b.not_run is None and b.excerpt_of is None for b in blocks_of(page))
]


def test_the_docs_have_python_examples_and_each_is_valid_python() -> None:
    assert len(ALL_BLOCKS) >= 20, [b.where for b in ALL_BLOCKS]
    for block in ALL_BLOCKS:
        ast.parse(block.code, filename=block.where)


def test_a_block_that_is_not_run_says_why() -> None:
    for block in ALL_BLOCKS:
        if block.not_run is not None:
            assert len(block.not_run) >= 10, f'{block.where}: ".. not-run:" needs a reason'


@pytest.mark.parametrize(
    'block', [pytest.param(b, id=b.where) for b in ALL_BLOCKS if b.excerpt_of is not None]
)
def test_a_docs_excerpt_is_in_its_file_verbatim(block: Block) -> None:
    path = block.excerpt_of
    assert path is not None and path.is_file(), f'{block.where} names {path}, which does not exist'
    rest = block.code.partition('\n')[2]
    assert rest.strip('\n') in path.read_text(), (
        f'{block.where}: this excerpt is not in {path} verbatim (update one or the other)'
    )


def _missing_requirement(page: Path) -> Optional[str]:
    for module in _REQUIRES.findall(page.read_text()):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return module
    return None


@pytest.mark.parametrize('page', [pytest.param(p, id=p.name) for p in RUN_PAGES])
def test_a_docs_page_python_blocks_run_in_order_and_print_what_they_say(
    page: Path, amqp_url: str, unique_name: str, tmp_path: Path
) -> None:
    missing = _missing_requirement(page)
    if missing is not None:
        pytest.skip(f'docs/{page.name} needs {missing}, which is not importable yet')
    script = [PRELUDE.format(queue=unique_name)]
    expected: List[str] = []
    for block in blocks_of(page):
        if block.not_run is not None or block.excerpt_of is not None:
            continue
        code = block.code.replace(repr(README_URL), repr(amqp_url))
        code = code.replace("'celery'", repr(unique_name))
        script.append(f'# ---- {block.where}\n{code}')
        expected.extend(expected_prints(code))
    path = tmp_path / f'docs_{page.stem.replace("-", "_")}.py'
    run_as_one_script(path, script, expected, amqp_url, unique_name)


def test_every_error_class_has_a_section_on_the_errors_page() -> None:
    from pika_rpc import errors

    classes = [
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    ]
    assert len(classes) >= 20, classes
    text = (DOCS / 'errors.rst').read_text()
    titles = set(re.findall(r'^``(\w+)``\n[-~^]+$', text, re.M))
    missing = sorted(set(classes) - titles)
    assert not missing, f'docs/errors.rst has no section for {missing}'


def test_the_design_module_map_lists_every_module_at_its_level() -> None:
    from tests.unit.test_layers import LEVELS

    text = (DOCS / 'design.rst').read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r'^``(\w+)``\s+(\d+)\s+\S', text, re.M)}
    missing = sorted(set(LEVELS) - set(rows))
    assert not missing, f'docs/design.rst module map has no row for {missing}'
    wrong = {m: (rows[m], LEVELS[m]) for m in LEVELS if int(rows[m]) != LEVELS[m]}
    assert not wrong, f'docs/design.rst module map levels (doc, LEVELS) differ: {wrong}'


def test_every_json_example_of_the_docs_parses() -> None:
    """``.. code-block:: json`` blocks (captured messages) are JSON, or JSON lines."""
    import json

    directive = re.compile(r'^(?P<indent>\s*)\.\. code-block:: json\s*$')
    count = 0
    for page in PAGES:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            match = directive.match(line)
            if not match:
                continue
            indent, body = len(match.group('indent')), []
            for text in lines[i + 1 :]:
                if text.strip() and len(text) - len(text.lstrip()) <= indent:
                    break
                body.append(text)
            code = '\n'.join(body).strip()
            count += 1
            try:
                json.loads(code)
            except ValueError:
                for n, row in enumerate(code.splitlines()):
                    try:
                        json.loads(row)
                    except ValueError as exc:
                        raise AssertionError(f'docs/{page.name}:{i + 1}, row {n}: {exc}') from None
    assert count >= 1
