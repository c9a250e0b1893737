"""``App(main, broker=...)``, ``shared_task``, ``autodiscover_tasks`` and ``include``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
import warnings
from typing import Any, Iterator

import pytest

from pika_rpc import App, Worker, _shared, shared_task
from pika_rpc._shared import current_app
from tests.integration.web_support import DJANGO_PROJECT, subprocess_env
from tests.integration.worker_support import delete_queue

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0


# ------------------------------------------------------------------ App's arguments


def test_the_first_argument_is_the_apps_name_and_broker_is_a_keyword() -> None:
    url = 'amqp://u:p@broker.example:5672//'
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        app = App('proj', broker=url, backend='rpc://')
    assert app.main == 'proj' and app.conf.broker_url == url
    assert app.conf.result_backend == 'rpc://'
    assert 'p@' not in repr(app)


def test_a_url_given_first_still_works_with_a_deprecation_warning() -> None:
    url = 'amqp://u:p@broker.example:5672//'
    with pytest.warns(DeprecationWarning, match=r'App\(broker=url\)') as caught:
        app = App(url, result_expires=60)
    assert caught[0].filename == __file__  # points at the caller's line
    assert app.main is None and app.conf.broker_url == url
    with pytest.warns(DeprecationWarning):
        listed = App([url, 'amqp://h2//'])
    assert listed.conf.broker_url == f'{url};amqp://h2//'


def test_a_broker_given_twice_is_refused() -> None:
    with pytest.raises(TypeError, match='both'):
        App('proj', broker='amqp://a//', broker_url='amqp://b//')
    with (
        pytest.raises(TypeError, match='both first and as broker='),
        pytest.warns(DeprecationWarning),
    ):
        App('amqp://a//', broker='amqp://b//')


def test_a_backend_other_than_rpc_is_refused() -> None:
    with pytest.raises(ValueError, match='rpc://'):
        App('proj', backend='redis://localhost')


# ------------------------------------------------------------------ shared_task


@pytest.fixture(autouse=True)
def _shared_tasks_end_with_the_test() -> Iterator[None]:
    """Shared tasks are process-wide (as in Celery): those a test declares are forgotten
    after it, so Apps of later tests (a Worker's ``registered`` list) do not see them."""
    before = list(_shared._constructors)
    yield
    with _shared._lock:
        _shared._constructors[:] = before


def _fresh_name() -> str:
    return f'shared.{uuid.uuid4().hex}'


def test_a_shared_task_is_registered_with_existing_and_later_apps() -> None:
    before = App('before', set_as_current=False)
    name = _fresh_name()

    @shared_task(name=name)
    def double(x):
        return 2 * x

    after = App('after')
    assert before.tasks[name].app is before and after.tasks[name].app is after
    assert current_app() is after
    assert double.name == name and double(4) == 8  # runs here
    assert double.AsyncResult('x').app is after  # the current app's task


def test_an_app_keeps_its_own_task_of_a_shared_tasks_name() -> None:
    app = App('own')
    name = _fresh_name()

    @app.task(name=name)
    def mine():
        return 'mine'

    @shared_task(name=name)
    def theirs():
        return 'theirs'

    assert app.tasks[name]() == 'mine'


def test_a_shared_task_runs_through_the_current_app_and_its_worker(
    amqp_url: str, unique_name: str
) -> None:
    name = _fresh_name()

    @shared_task(name=name, bind=True)
    def whoami(self, x):
        return [self.name, x]

    app = App('proj', broker=amqp_url, task_default_queue=unique_name, result_expires=300)
    worker = Worker(app)
    worker.start()
    try:
        assert whoami.delay(7).get(timeout=WAIT) == [name, 7]
    finally:
        worker.stop(WAIT)
        app.close()
        delete_queue(amqp_url, unique_name)


# ------------------------------------------------------------------ autodiscover_tasks


@pytest.fixture
def packages(tmp_path: Any, monkeypatch: Any) -> Iterator[Any]:
    """``make(tasks_source)`` -> a new importable package (``None``: without ``tasks``)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made = []

    def make(tasks_source: Any = None) -> str:
        name = f'pkg_{uuid.uuid4().hex}'
        made.append(name)
        (tmp_path / name).mkdir()
        (tmp_path / name / '__init__.py').write_text('')
        if tasks_source is not None:
            (tmp_path / name / 'tasks.py').write_text(textwrap.dedent(tasks_source))
        return name

    yield make
    for name in made:
        for module in [m for m in sys.modules if m == name or m.startswith(name + '.')]:
            del sys.modules[module]


TASKS = """
from pika_rpc import shared_task

@shared_task(name='{name}')
def add(x, y):
    return x + y
"""


def test_autodiscovery_is_lazy_and_imports_each_packages_tasks_module(packages: Any) -> None:
    name = _fresh_name()
    with_tasks, without = packages(TASKS.format(name=name)), packages()
    app = App('proj')
    app.autodiscover_tasks([with_tasks, without])
    assert f'{with_tasks}.tasks' not in sys.modules  # not yet
    assert app.tasks[name](2, 3) == 5
    assert f'{with_tasks}.tasks' in sys.modules and f'{without}.tasks' not in sys.modules


def test_autodiscovery_takes_a_callable_and_force_imports_at_once(packages: Any) -> None:
    first, second = _fresh_name(), _fresh_name()
    pkg1, pkg2 = packages(TASKS.format(name=first)), packages(TASKS.format(name=second))
    app = App('proj')
    app.autodiscover_tasks(lambda: [pkg1])
    app.autodiscover_tasks([pkg2], force=True)
    assert f'{pkg2}.tasks' in sys.modules and f'{pkg1}.tasks' not in sys.modules
    assert {first, second} <= set(app.tasks)


def test_an_import_error_inside_a_tasks_module_is_raised_and_tried_again(packages: Any) -> None:
    broken = packages('import no_such_module_anywhere_12345\n')
    app = App('proj')
    app.autodiscover_tasks([broken])
    for _ in range(2):  # not swallowed, not forgotten
        with pytest.raises(ModuleNotFoundError, match='no_such_module_anywhere_12345'):
            app.tasks  # noqa: B018


def test_autodiscovery_after_first_use_imports_at_once(packages: Any) -> None:
    name = _fresh_name()
    app = App('proj')
    assert app.tasks == {} or name not in app.tasks
    app.autodiscover_tasks([packages(TASKS.format(name=name))])
    assert name in app.tasks


def test_include_and_imports_are_imported_on_first_use(packages: Any) -> None:
    one, two = _fresh_name(), _fresh_name()
    pkg1, pkg2 = packages(TASKS.format(name=one)), packages(TASKS.format(name=two))
    app = App('proj', include=[f'{pkg1}.tasks'], imports=(f'{pkg2}.tasks',))
    assert f'{pkg1}.tasks' not in sys.modules
    assert {one, two} <= set(app.tasks)


def test_a_worker_finalizes_its_app_so_discovered_tasks_run(
    packages: Any, amqp_url: str, unique_name: str
) -> None:
    name = _fresh_name()
    pkg = packages(TASKS.format(name=name))
    app = App('proj', broker=amqp_url, task_default_queue=unique_name, result_expires=300)
    app.autodiscover_tasks([pkg])
    worker = Worker(app)
    assert f'{pkg}.tasks' in sys.modules
    worker.start()
    try:
        assert app.send_task(name, (20, 22)).get(timeout=WAIT) == 42
    finally:
        worker.stop(WAIT)
        app.close()
        delete_queue(amqp_url, unique_name)


DJANGO_SCRIPT = """
import os, django
os.environ['DJANGO_SETTINGS_MODULE'] = 'djproject.settings'
django.setup()
from pika_rpc import Worker
from demo.pika_app import get_app
app = get_app()
assert 'demo.add' in app.tasks, sorted(app.tasks)
from demo.tasks import add
worker = Worker(app)
worker.start()
try:
    print('RESULT', add.delay(2, 3).get(timeout=10))
finally:
    worker.stop(10)
    app.close()
"""


def test_the_django_example_discovers_its_apps_tasks_and_runs_a_shared_task(
    amqp_url: str, unique_name: str
) -> None:
    env = subprocess_env(AMQP_URL=amqp_url, CELERY_TASK_DEFAULT_QUEUE=unique_name)
    env['PYTHONWARNINGS'] = 'error::DeprecationWarning'
    try:
        done = subprocess.run(
            [sys.executable, '-c', DJANGO_SCRIPT],
            cwd=str(DJANGO_PROJECT),
            env=env,
            capture_output=True,
            text=True,
            timeout=50,
        )
    finally:
        delete_queue(amqp_url, unique_name)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'RESULT 5' in done.stdout
