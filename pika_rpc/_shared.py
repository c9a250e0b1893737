"""``shared_task``, the current app, and finding a package's ``tasks`` module.

A task written with ``@shared_task`` belongs to no app: it is registered with every ``App``
of the process, those that exist when it is declared and those created later, so reusable
modules (a Django app's ``tasks.py``) need not import the project's app. The object
``@shared_task`` returns stands for the task of the *current* app: the last ``App`` created
(unless it was created with ``set_as_current=False``), as Celery's ``current_app``. With no
app at all, calling it runs the function here; sending it raises ``RuntimeError``.

``related_module`` finds ``package.tasks`` as Celery's loader does: a package that cannot be
imported is tried one level up (Django's ``'app.apps.AppConfig'`` entries), a missing
``tasks`` module is skipped, and an import error *inside* an existing module is raised.

Level 3: imports ``task``; knows apps only through the hooks they call (no import of ``app``).
"""

from __future__ import annotations

import importlib
import threading
import weakref
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional

from ._context import current_app, set_current_app
from .task import Task

__all__ = ['shared_task', 'current_app', 'register_app', 'related_module', 'SharedTask']

_lock = threading.Lock()
_apps: 'weakref.WeakSet[Any]' = weakref.WeakSet()
_constructors: List[Callable[[Any], Any]] = []


def register_app(app: Any, set_as_current: bool = True) -> None:
    """Called by ``App.__init__``: the app gets every shared task, and may become current."""
    with _lock:
        _apps.add(app)
        if set_as_current:
            set_current_app(app)
        constructors = list(_constructors)
    for constructor in constructors:
        constructor(app)


class SharedTask:
    """Stands for the shared task ``name`` of the current app (see the module docstring).

    Attribute access, ``delay``, ``apply_async``, ``AsyncResult`` go to the current app's
    ``Task``; calling it runs the function (here, in this thread).
    """

    def __init__(self, fun: Callable[..., Any], name: str, detached: Task) -> None:
        self.name = name
        self.__wrapped__ = fun
        self.__doc__ = fun.__doc__
        self.__name__ = getattr(fun, '__name__', name)
        self._detached = detached

    def _get_current_object(self) -> Task:
        app = current_app()
        if app is None:
            raise RuntimeError(
                f'shared task {self.name!r} has no app: create a pika_rpc App first '
                f'(App("proj", broker=...)); shared tasks are registered with every App'
            )
        return app.tasks[self.name]

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith('__'):
            raise AttributeError(attr)
        return getattr(self._get_current_object(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        app = current_app()
        task = self._detached if app is None else app.tasks[self.name]
        return task(*args, **kwargs)

    def __repr__(self) -> str:
        return f'<@shared_task: {self.name}>'


def shared_task(*args: Any, **opts: Any) -> Any:
    """Declare a task for every app: ``@shared_task`` or ``@shared_task(name=..., bind=...)``.

    Takes ``@app.task``'s options. The task is registered with every existing ``App`` now
    and with every later one when it is created; a name an app already has is left alone.
    """

    def create(fun: Callable[..., Any]) -> SharedTask:
        name = opts.get('name') or f'{fun.__module__}.{fun.__name__}'
        options = {k: v for k, v in opts.items() if k != 'name'}
        # refuses bad options now, as app.task does
        detached: Task[..., Any] = Task(None, fun, name, **options)

        def constructor(app: Any) -> None:
            app._register_shared(fun, name, options)

        with _lock:
            _constructors.append(constructor)
            apps = list(_apps)
        for app in apps:
            constructor(app)
        return SharedTask(fun, name, detached)

    if len(args) == 1 and callable(args[0]) and not opts:
        return create(args[0])
    if args:
        raise TypeError('use @shared_task or @shared_task(name=..., bind=...)')
    return create


def related_module(package: str, related_name: Optional[str]) -> Optional[ModuleType]:
    """Import ``package.related_name`` (or ``package`` itself when ``related_name`` is
    empty); None when that module does not exist. Raises an error from inside it."""
    try:
        module = importlib.import_module(package)
        if not related_name:
            return module
    except ModuleNotFoundError:
        package = package.rpartition('.')[0]  # 'app.apps.AppConfig' -> 'app.apps'
        if not package:
            raise
    name = f'{package}.{related_name}'
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def django_packages() -> List[str]:
    """The names of Django's installed apps, or ``[]`` without a configured Django."""
    try:
        from django.apps import apps  # optional dependency
        from django.conf import settings
    except ImportError:
        return []
    if not settings.configured:
        return []
    return [config.name for config in apps.get_app_configs()]


def discover(packages: Any, related_name: Optional[str]) -> Dict[str, Optional[ModuleType]]:
    """Import each package's ``related_name`` module; ``packages`` may be a callable."""
    if callable(packages):
        packages = packages()
    if packages is None:
        packages = django_packages()
    if isinstance(packages, str):
        packages = [packages]
    return {package: related_module(package, related_name) for package in packages}
