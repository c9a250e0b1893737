"""The package's layout rules, read with ``ast`` (no import of pika_rpc runs):

* a module imports only from lower levels (the table below); nothing inside the package
  imports ``pika_rpc/__init__``. Imports under ``if TYPE_CHECKING:`` (for annotations
  only, never run) may name any module of the package;
* pika is imported only by the modules that talk to it: ``_pika`` (the boundary), the I/O
  thread's ``_link``, ``_outbox``, ``_connector``, ``_consumers``, ``_confirms`` and
  ``_deliveries``;
* a private pika attribute (one pika's own source defines, e.g. ``_impl``, ``_transport``,
  ``_frame_buffer``) is touched in ``_pika`` only;
* no module is over ``MAX_LINES`` lines: a later feature splits a module rather than grow it.
"""

from __future__ import annotations

import ast
import functools
import importlib
import pathlib
from typing import FrozenSet, Iterator, Set

import pika
import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / 'pika_rpc'
MAX_LINES = 650

LEVELS = {
    # pure foundations
    'errors': 0,
    'states': 0,
    '_version': 0,
    '_timeouts': 0,
    '_context': 0,
    '_urls': 0,
    '_kombu_opts': 0,
    '_queue_settings': 0,
    '_celery_settings': 0,
    '_task_options': 0,
    '_interrupt': 0,
    '_rate_limit': 0,
    '_setting_specs': 1,
    'config': 2,
    '_advice': 1,
    'serialization': 1,
    '_retry': 1,
    '_pending': 1,
    '_threads': 1,
    '_timer': 1,
    'findbroker': 1,
    '_handoff': 1,
    '_declarations': 1,
    '_pidbox': 1,
    '_request': 1,
    '_eager': 1,
    # Celery's messages, AMQP messages, the pika boundary
    'message': 2,
    'protocol': 2,
    '_delayed': 2,
    'result': 2,
    'task': 2,
    '_pika': 2,
    # the I/O thread's parts, the one publish-and-wait path
    '_exchange': 3,
    '_queue': 4,
    'entities': 5,
    '_confirms': 3,
    '_deliveries': 3,
    '_consumers': 3,
    '_consumer_commands': 4,
    '_publish': 3,
    '_outbox': 4,
    '_connector': 3,
    '_link': 5,
    # the process's links, and kombu's surface on them (connection below messaging)
    '_registry': 6,
    '_ensure': 6,
    '_addresses': 6,
    '_basic_get': 6,
    '_taskqueues': 6,
    '_jobs': 7,
    'connection': 7,
    'consumer': 8,
    'messaging': 9,
    'pools': 8,
    'simple': 10,
    '_shared': 3,
    '_routing': 7,
    # Celery's surface
    '_replies': 10,
    '_hub': 10,
    '_control': 10,
    '_storing': 4,
    '_execution': 8,
    '_receiving': 9,
    'backend': 11,
    'worker': 11,
    'app': 12,
    'cli': 13,
    '_celery_replies': 12,
    'celery_backend': 13,
    '__main__': 14,
}
PIKA_ALLOWED = {'_pika', '_link', '_outbox', '_connector', '_consumers', '_confirms', '_deliveries'}
#: The pika internals pika_rpc relies on (see pika_rpc/_pika.py); no other module may even
#: define attributes of these names, so a use of one elsewhere is always pika's.
KNOWN_INTERNALS = {
    '_impl',
    '_transport',
    '_sock',
    '_produce',
    '_frame_buffer',
    '_on_data_available',
    '_set_cookie',
    '_body_max_length',
    '_MAX_RECV_BYTES',
    '_MAX_CONSUME_BYTES',
    '_processing_frame_buffer',
    '_heartbeat_checker',
}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
        isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING'
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:`` (its ``else`` does run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(path: pathlib.Path, runtime_only: bool = False) -> Iterator[str]:
    tree = ast.parse(path.read_text())
    for node in _runtime_nodes(tree) if runtime_only else ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    yield node.module.split('.')[0]
                else:
                    yield from (alias.name for alias in node.names)
            elif node.module:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


MODULES = sorted(p.stem for p in PACKAGE.glob('*.py') if p.stem != '__init__')


def test_every_module_has_a_level() -> None:
    assert set(MODULES) <= set(LEVELS), set(MODULES) - set(LEVELS)


@pytest.mark.parametrize('module', MODULES)
def test_module_imports_only_lower_levels(module: str) -> None:
    level = LEVELS[module]
    for name in imports_of(PACKAGE / f'{module}.py'):
        if name.split('.')[0] == 'pika':
            assert module in PIKA_ALLOWED, f'{module} imports pika'
    for name in imports_of(PACKAGE / f'{module}.py', runtime_only=True):
        top = name.split('.')[0]
        if top == 'pika_rpc' or name in LEVELS:
            target = name.split('.')[-1] if top == 'pika_rpc' else name
            assert target != '__init__' and target in LEVELS, f'{module} imports {name}'
            assert LEVELS[target] < level, (
                f'{module} (level {level}) imports {target} (level {LEVELS[target]})'
            )


@pytest.mark.parametrize('module', MODULES)
def test_no_module_is_over_the_size_limit(module: str) -> None:
    lines = len((PACKAGE / f'{module}.py').read_text().splitlines())
    assert lines <= MAX_LINES, f'{module}.py has {lines} lines (at most {MAX_LINES}): split it'


def _private_names(tree: ast.AST) -> Set[str]:
    """Private names a source defines: ``self._x = ...``, ``setattr(self, '_x', ...)``,
    ``def _x``, class-level ``_X = ...``."""
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif (
            isinstance(node, ast.Call)
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and getattr(node.func, 'attr', getattr(node.func, 'id', ''))
            in ('setattr', '__setattr__')
        ):
            names.add(node.args[1].value)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {n for n in names if n.startswith('_') and not n.startswith('__')}


@functools.lru_cache(maxsize=None)
def _pika_private_names() -> FrozenSet[str]:
    root = pathlib.Path(pika.__file__).parent
    names: Set[str] = set()
    for path in root.rglob('*.py'):
        names |= _private_names(ast.parse(path.read_text(encoding='utf-8')))
    return frozenset(names)


def test_the_known_internals_are_pikas_and_no_other_module_defines_them() -> None:
    newer = {'_processing_frame_buffer'}  # pika's main branch only
    assert KNOWN_INTERNALS - newer <= _pika_private_names()
    for module in MODULES:
        if module == '_pika':
            continue
        own = _private_names(ast.parse((PACKAGE / f'{module}.py').read_text()))
        assert not own & KNOWN_INTERNALS, f'{module} defines {own & KNOWN_INTERNALS}'


@functools.lru_cache(maxsize=None)
def _pikas_only() -> FrozenSet[str]:
    """Private names pika defines and pika_rpc (outside ``_pika``) does not, and the known
    internals."""
    ours: Set[str] = set()
    for other in MODULES:
        if other != '_pika':
            ours |= _private_names(ast.parse((PACKAGE / f'{other}.py').read_text()))
    return frozenset((_pika_private_names() - ours) | KNOWN_INTERNALS)


@pytest.mark.parametrize('module', [m for m in MODULES if m != '_pika'])
def test_private_pika_attributes_are_touched_only_in_the_pika_module(module: str) -> None:
    pikas = _pikas_only()
    tree = ast.parse((PACKAGE / f'{module}.py').read_text())
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in pikas
    }
    strings = {
        node.value
        for node in ast.walk(tree)  # getattr(obj, '_impl')
        if isinstance(node, ast.Constant) and node.value in KNOWN_INTERNALS
    }
    assert not used | strings, (
        f'{module} touches pika internals {sorted(used | strings)}: only pika_rpc/_pika.py may'
    )


# Names moved to another module by the split keep their old import path (users import them).
MOVED = [
    ('protocol', 'TaskRequest', '_request'),
    ('config', 'parse_url', '_urls'),
    ('config', 'mask_url', '_urls'),
    ('config', 'BrokerAddress', '_urls'),
    ('config', 'merge_retry_policy', '_setting_specs'),
    ('config', 'DEFAULT_RESULT_EXPIRES', '_setting_specs'),
    ('config', 'RETRY_POLICY_KEYS', '_setting_specs'),
    ('entities', 'Message', 'message'),
    ('entities', 'check_properties', 'message'),
    ('entities', 'compress', 'message'),
    ('entities', 'decompress', 'message'),
    ('entities', 'maybe_delivery_mode', 'message'),
    ('entities', 'TRANSIENT_DELIVERY_MODE', 'message'),
    ('entities', 'PERSISTENT_DELIVERY_MODE', 'message'),
    ('messaging', 'Connection', 'connection'),
    ('worker', 'PIDBOX_EXCHANGE', 'protocol'),
    ('worker', 'REVOKES_MAX', 'protocol'),
    ('worker', 'REVOKE_EXPIRES', 'protocol'),
    ('backend', 'ResultConsumer', '_replies'),
    ('messaging', 'Consumer', 'consumer'),
    ('protocol', 'PIDBOX_EXCHANGE', '_pidbox'),
    ('protocol', 'PIDBOX_EXCHANGE_TYPE', '_pidbox'),
    ('protocol', 'PIDBOX_QUEUE_EXPIRES', '_pidbox'),
    ('protocol', 'PIDBOX_QUEUE_TTL', '_pidbox'),
    ('protocol', 'pidbox_queue_name', '_pidbox'),
    ('protocol', 'REVOKES_MAX', '_pidbox'),
    ('protocol', 'REVOKE_EXPIRES', '_pidbox'),
    ('protocol', 'control_revoke', '_pidbox'),
]


@pytest.mark.parametrize('old, name, new', MOVED)
def test_a_moved_name_is_still_importable_from_its_old_module(
    old: str, name: str, new: str
) -> None:
    old_module = importlib.import_module(f'pika_rpc.{old}')
    new_module = importlib.import_module(f'pika_rpc.{new}')
    assert getattr(old_module, name) is getattr(new_module, name)
    assert name in old_module.__all__


def test_imports_for_annotations_only_are_not_runtime_imports(tmp_path: pathlib.Path) -> None:
    source = tmp_path / 'mod.py'
    source.write_text(
        'from typing import TYPE_CHECKING\n'
        'if TYPE_CHECKING:\n'
        '    from .app import App\n'
        'else:\n'
        '    from .errors import PikaRPCError\n'
        'def f():\n'
        '    from . import states\n'
    )
    assert sorted(imports_of(source, runtime_only=True)) == ['errors', 'states', 'typing']
    assert sorted(imports_of(source)) == ['app', 'errors', 'states', 'typing']
