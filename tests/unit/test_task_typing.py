"""``Task`` is generic for type checkers (``Task[[int, int], int]``) and stays a plain class
at run time: subscripting it works on every Python (3.9 has no ParamSpec), and importing
pika_rpc imports no typing-only module. ``mypy`` itself runs in CI (``.ci/run``)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from pika_rpc import App, Task


def test_task_subscripts_and_subclasses_at_run_time() -> None:
    assert Task[[int, int], int] is not None
    assert Task[..., Any] is not None

    class Counted(Task[..., Any]):
        calls = 0

    assert issubclass(Counted, Task)


def test_a_decorated_task_still_runs_its_function_with_its_arguments() -> None:
    app = App(broker='amqp://guest:guest@localhost:5672//')  # nothing connects: no call sends

    @app.task(name='t.add')
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name='t.named', bind=True)
    def named(self: Task[[str], str], suffix: str) -> str:
        return self.name + suffix

    assert isinstance(add, Task) and add(2, 3) == 5 and add.__wrapped__(1, 1) == 2
    assert named('!') == 't.named!'
    assert app.get_task('t.add') is add


def test_importing_the_package_imports_no_typing_only_module() -> None:
    code = (
        'import sys, pika_rpc, pika_rpc.cli, pika_rpc.worker; '
        "print(sorted(m for m in ('typing_extensions', 'mypy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == '[]'
