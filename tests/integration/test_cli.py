"""``python -m pika_rpc worker`` as a subprocess: ready line, tasks, graceful SIGTERM/SIGINT.

The worker's app lives in a module written to ``tmp_path``; the test waits for the
worker's ``ready`` line on stdout (never a sleep) and talks to it with its own App.
"""

from __future__ import annotations

import os
import pathlib
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Any, Iterator, List

import pytest

from pika_rpc import App, states
from tests.helpers import list_queues
from tests.integration.web_support import free_port
from tests.integration.worker_support import delete_queue, queue_depth

ROOT = pathlib.Path(__file__).resolve().parents[2]

TASKS_MODULE = textwrap.dedent("""
    import os
    import threading

    from pika_rpc import App

    app = App(broker=os.environ['AMQP_URL'], task_default_queue=os.environ['TEST_QUEUE'],
              task_track_started=True)
    other = app

    @app.task(name='cli.add')
    def add(x, y):
        return x + y

    @app.task(name='cli.wait_for_file')
    def wait_for_file(path):
        pause = threading.Event()
        while not os.path.exists(path):     # the test creates it once it saw STARTED
            pause.wait(0.05)
        return 'finished after the signal'
""")


class WorkerProcess:
    """The CLI in a subprocess; stdout lines are collected by a thread."""

    def __init__(self, args: List[str], cwd: pathlib.Path, env: dict) -> None:
        self.stderr_path = cwd / 'worker.err'
        self._stderr = open(self.stderr_path, 'w')
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'pika_rpc', *args],
            cwd=str(cwd),
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: 'queue.Queue[str]' = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put('')  # EOF

    def wait_for_line(self, text: str, timeout: float = 30) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f'no {text!r} line within {timeout} s; stderr:\n{self.stderr()}'
                ) from None
            if not line:
                raise AssertionError(
                    f'worker exited ({self.proc.poll()}) before {text!r}; stderr:\n{self.stderr()}'
                )
            if text in line:
                return line

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()


@pytest.fixture
def cli(amqp_url: str, unique_name: str, tmp_path: pathlib.Path) -> Iterator:
    (tmp_path / 'cli_tasks.py').write_text(TASKS_MODULE)
    env = dict(
        os.environ,
        AMQP_URL=amqp_url,
        TEST_QUEUE=unique_name,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
    )
    started: List[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        worker = WorkerProcess(['worker', *args], tmp_path, env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()
    delete_queue(amqp_url, unique_name)


@pytest.fixture
def client(amqp_url: str, unique_name: str) -> Iterator[App]:
    app = App(broker=amqp_url, task_default_queue=unique_name)
    yield app
    app.close()


def test_the_worker_prints_a_ready_line_and_runs_tasks(cli, client, unique_name):
    worker = cli('-A', 'cli_tasks', '-Q', unique_name, '-c', '2', '--loglevel', 'INFO')
    line = worker.wait_for_line('ready')
    assert unique_name in line and 'concurrency 2' in line
    assert client.send_task('cli.add', (2, 3)).get(timeout=10) == 5
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    log = worker.stderr()
    assert 'Task cli.add[' in log and 'succeeded' in log
    assert '[' in log.splitlines()[0] and 'INFO/' in log  # the readable format


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_a_signal_with_a_task_running_lets_it_finish_and_exits_0(
    cli, client, unique_name, tmp_path, signum
):
    worker = cli('-A', 'cli_tasks:app', '-Q', unique_name, '-c', '1')
    worker.wait_for_line('ready')
    release = tmp_path / 'release'
    started = threading.Event()
    outcome: List = []
    result = client.send_task('cli.wait_for_file', (str(release),))

    def wait() -> None:
        try:
            outcome.append(
                result.get(
                    timeout=60, on_message=lambda m: m['status'] == states.STARTED and started.set()
                )
            )
        except Exception as exc:  # asserted below
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert started.wait(30), worker.stderr()
    worker.proc.send_signal(signum)
    waited_for = worker.proc.poll()
    release.write_text('go')
    waiter.join(60)
    assert outcome == ['finished after the signal']
    assert worker.proc.wait(30) == 0
    assert waited_for is None
    assert 'warm shutdown' in worker.stderr()


def test_a_waiting_message_goes_back_to_the_queue_at_sigterm(
    cli, client, unique_name, amqp_url, tmp_path
):
    worker = cli('-A', 'cli_tasks', '-Q', unique_name, '-c', '1')
    worker.wait_for_line('ready')
    held = client.send_task('cli.add', (1, 1), countdown=60)
    sent = client.send_task('cli.add', (2, 2))
    assert sent.get(timeout=10) == 4  # the held one came before it: it is with the worker
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    assert queue_depth(amqp_url, unique_name) == 1
    assert held.state == states.PENDING


def test_a_bad_app_name_exits_with_a_message(cli):
    worker = cli('-A', 'no_such_module_here')
    assert worker.proc.wait(30) != 0
    assert "cannot import 'no_such_module_here'" in worker.stderr()


def test_an_attribute_that_is_not_an_app_exits_with_a_message(cli):
    worker = cli('-A', 'cli_tasks:add')
    assert worker.proc.wait(30) != 0
    assert 'not a pika_rpc App' in worker.stderr()


def test_version_flag_prints_the_package_version_without_a_broker():
    from pika_rpc import __version__

    done = subprocess.run(
        [sys.executable, '-m', 'pika_rpc', '--version'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f'python -m pika_rpc {__version__}'


def test_queue_type_quorum_makes_the_worker_declare_its_queue_as_a_quorum_queue(
    cli, amqp_url, unique_name
):
    worker = cli('-A', 'cli_tasks', '-Q', unique_name, '--queue-type', 'quorum')
    worker.wait_for_line('ready')
    assert list_queues()[unique_name].arguments.get('x-queue-type') == 'quorum'
    sender = App(broker=amqp_url)  # the queue is not its own: used as it is
    try:
        assert sender.send_task('cli.add', (3, 4), queue=unique_name).get(timeout=10) == 7
    finally:
        sender.close()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0


GIVES_UP_MODULE = textwrap.dedent("""
    import os

    from pika_rpc import App, Queue

    name = os.environ['TEST_QUEUE']
    app = App(broker=os.environ['AMQP_URL'], task_queues=[Queue(name, no_declare=True)],
              task_default_queue=name, broker_consumer_retry_interval=0.1,
              broker_consumer_max_retries=1)
""")


def test_a_worker_that_gives_up_on_its_queue_exits_non_zero_saying_why(
    cli, unique_name, raw_channel, tmp_path
):
    (tmp_path / 'gives_up.py').write_text(GIVES_UP_MODULE)
    raw_channel.queue_declare(unique_name, durable=True)
    worker = cli('-A', 'gives_up', '-Q', unique_name)
    worker.wait_for_line('ready')
    raw_channel.queue_delete(unique_name)  # refused from now on: no declaration to bring it back
    assert worker.proc.wait(30) == 3
    log = worker.stderr()
    assert 'CRITICAL' in log and f'gave up consuming from queue {unique_name!r}' in log


# ------------------------------------------------------------------ no broker at startup

NO_BROKER_MODULE = """
from pika_rpc import App

app = App(broker={url!r}, task_default_queue={queue!r}, broker_connection_max_retries={retries!r},
          broker_connection_retry_on_startup={on_startup!r},
          broker_transport_options={{'interval_start': 0, 'interval_step': 0.05,
                                    'interval_max': 0.2}})

@app.task(name='cli.add')
def add(x, y):
    return x + y
"""
SECRET = 'Secr3t-pw'


def _no_broker_app(
    tmp_path: pathlib.Path, url: str, queue: str, retries: Any = 2, on_startup: bool = True
) -> str:
    (tmp_path / 'no_broker.py').write_text(
        NO_BROKER_MODULE.format(url=url, queue=queue, retries=retries, on_startup=on_startup)
    )
    return 'no_broker'


def _attempt_lines(log: str, port: int) -> List[str]:
    prefix = f'Cannot connect to amqp://guest:**@127.0.0.1:{port}//: '
    return [line for line in log.splitlines() if prefix in line]


def test_a_worker_retries_at_startup_a_line_per_attempt_then_exits_4_with_the_advice(
    cli, unique_name, tmp_path
):
    port = free_port()
    url = f'amqp://guest:{SECRET}@127.0.0.1:{port}//'
    worker = cli('-A', _no_broker_app(tmp_path, url, unique_name), '-Q', unique_name)
    assert worker.proc.wait(60) == 4
    log = worker.stderr()
    lines = _attempt_lines(log, port)
    assert len(lines) == 3, log  # the first attempt and 2 retries
    assert all('WARNING' in line and 'Connection refused' in line for line in lines)
    assert 'retrying in 0.0 s' in lines[0] and 'retrying in 0.1 s' in lines[1]
    assert 'giving up after 3 attempts' in lines[2]
    assert 'start RabbitMQ there' in lines[0]  # what to do, on the first line
    critical = [line for line in log.splitlines() if 'CRITICAL' in line]
    assert len(critical) == 1 and 'worker not started: cannot connect to' in critical[0]
    assert 'start RabbitMQ there' in critical[0] and 'gave up' in critical[0]
    assert 'Traceback' not in log and 'ERROR' not in log and SECRET not in log


def test_with_retry_on_startup_off_the_worker_exits_4_after_the_first_attempt(
    cli, unique_name, tmp_path
):
    port = free_port()
    url = f'amqp://guest:{SECRET}@127.0.0.1:{port}//'
    module = _no_broker_app(tmp_path, url, unique_name, retries=100, on_startup=False)
    worker = cli('-A', module, '-Q', unique_name)
    assert worker.proc.wait(60) == 4
    log = worker.stderr()
    assert len(_attempt_lines(log, port)) == 1, log
    assert 'worker not started' in log and 'start RabbitMQ there' in log
    assert 'Traceback' not in log and SECRET not in log


def test_a_worker_started_before_the_broker_waits_for_it_then_runs_tasks(
    cli, client, unique_name, tmp_path, fault_proxy, amqp_url
):
    fault_proxy.refuse(True)
    module = _no_broker_app(tmp_path, fault_proxy.url(amqp_url), unique_name, retries=None)
    worker = cli('-A', module, '-Q', unique_name)
    assert fault_proxy.wait_for(lambda: fault_proxy.connection_attempts >= 3, 30)
    assert worker.proc.poll() is None  # still waiting, as Celery's worker does
    fault_proxy.refuse(False)
    worker.wait_for_line('ready')
    assert client.send_task('cli.add', (20, 22)).get(timeout=10) == 42
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    log = worker.stderr()
    lines = _attempt_lines(log, fault_proxy.port)
    assert len(lines) >= 3 and all('retrying in' in line for line in lines), log
    assert 'Traceback' not in log
