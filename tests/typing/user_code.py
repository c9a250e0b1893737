"""README's quickstart, groups and tasks, as a user writes them with type hints."""

from __future__ import annotations

import threading
import uuid
from typing import Any, Dict, List

from typing_extensions import assert_type

import pika_rpc
from pika_rpc import (
    App,
    AsyncResult,
    ConnectionLost,
    GroupResult,
    PikaRPCError,
    ResultSet,
    Task,
    TimeoutError,
    Worker,
    states,
)

# ---------------------------------------------------------------- the tasks (tasks.py)
app = App(broker='amqp://guest:guest@localhost:5672//', task_track_started=True)


@app.task(name='tasks.add')
def add(x: int, y: int) -> int:
    return x + y


@app.task(name='tasks.resize', bind=True)
def resize(self: Task[[str], str], path: str) -> str:
    self.update_state(state='PROGRESS', meta={'done': 1, 'total': 2})
    return path.upper()


@app.task
def ping() -> str:
    return 'pong'


@app.task(bind=True, max_retries=5)
def flaky(self: Task[[int], int], n: int) -> int:
    try:
        return 100 // n
    except ZeroDivisionError as exc:
        raise self.retry(exc=exc, countdown=1) from exc


@app.task(ignore_result=True, acks_late=False, bind=False)
def fire(event: str) -> None:
    print(event)


# A decorated task keeps its signature: called here, it runs the function.
add_task: Task[[int, int], int] = add
resize_task: Task[[str], str] = resize
assert_type(add(2, 3), int)
assert_type(resize('a.png'), str)  # `self` is given by the task, not by the caller
assert_type(ping(), str)
assert_type(fire('started'), None)
add('2', 3)  # type: ignore[arg-type]
add(2)  # type: ignore[call-arg]
resize(self=None, path='a')  # type: ignore[call-arg]

# .delay() takes the function's parameters and returns an AsyncResult.
assert_type(add.delay(2, 3), AsyncResult)
assert_type(resize.delay('a.png'), AsyncResult)
add.delay(2, 'three')  # type: ignore[arg-type]
fire.delay(event=1)  # type: ignore[arg-type]
assert_type(add.apply_async((2, 3), countdown=1), AsyncResult)
assert_type(add.apply_async(args=(2, 3), kwargs={}, task_id=str(uuid.uuid4())), AsyncResult)
assert_type(add.AsyncResult('some-id'), AsyncResult)
name: str = add.name
assert_type(app.tasks['tasks.add'], Task[..., Any])
assert_type(app.get_task('tasks.add'), Task[..., Any])

# ---------------------------------------------------------------- a worker in the process
worker = Worker(app, queues=['celery'], concurrency=4)
assert_type(worker.start(), Worker)
stats: Dict[str, Any] = worker.stats()

# ---------------------------------------------------------------- the client
client = App(broker='amqp://guest:guest@localhost:5672//', result_expires=3600)
result = client.send_task('tasks.add', (2, 3))
assert_type(result, AsyncResult)
print(result.get(timeout=10))
task_id: str = result.id
print(client.backend.get_task_meta(result.id)['status'])

seen: List[str] = []
big = client.send_task('tasks.resize', ('a.png',))
print(big.get(timeout=10, on_message=lambda m: seen.append(m['status'])))
state: str = big.state
ready: bool = big.ready()
if big.successful() and not big.failed():
    value: Any = big.result
print(big.traceback, big.date_done, big.children)
big.forget()
big.revoke(terminate=True)

# Storing states by hand.
task_id = str(uuid.uuid4())
reply_to: str = client.backend.on_task_call(None, task_id)
request = {'id': task_id, 'reply_to': client.backend.oid, 'correlation_id': task_id}
client.backend.mark_as_started(task_id, request=request)
client.backend.mark_as_done(task_id, 5, request=request)
assert_type(client.AsyncResult(task_id), AsyncResult)
print(client.AsyncResult(task_id).get(timeout=10))

# Waiting from many threads.
threads = [threading.Thread(target=result.get, kwargs={'timeout': 10}) for _ in range(4)]

# ---------------------------------------------------------------- groups
results = [client.send_task('tasks.add', (i, i)) for i in range(10)]
rs = client.ResultSet(results)
assert_type(rs, ResultSet)
assert_type(rs.join_native(timeout=10), List[Any])  # without a callback: the values
values: List[Any] = rs.get(timeout=10)
total: int = sum(rs.join_native(timeout=10))
assert_type(rs.join_native(timeout=10, callback=lambda tid, v: print(tid, v)), None)
for tid, meta in rs.iter_native(timeout=10):
    assert_type(tid, str)
    print(meta['status'], meta.get('result'))
print(len(rs), rs[0].id, rs.completed_count(), rs.ready(), rs.waiting())
for r in rs:
    assert_type(r, AsyncResult)

group = client.GroupResult(str(uuid.uuid4()), results)
assert_type(group, GroupResult)
assert_type(group.join_native(timeout=10), List[Any])
group_id: str | None = group.id
assert_type(ResultSet([result, big]), ResultSet)
assert_type(GroupResult('gid', [result]), GroupResult)

# ---------------------------------------------------------------- errors
try:
    client.send_task('tasks.add', (1, 2), queue='celery', countdown=5, priority=3).get(timeout=1)
except TimeoutError:
    print('not ready')
except ConnectionLost as exc:
    print('broker down:', exc)
except PikaRPCError as exc:
    print(type(exc).__name__, exc)
assert issubclass(pika_rpc.TimeoutError, TimeoutError)
client.send_task('tasks.add', (1, 2), countdown='soon')  # type: ignore[arg-type]
if result.state in states.READY_STATES:
    print(result.state == states.SUCCESS)
print(pika_rpc.__version__)

# ---------------------------------------------------------------- stopping
assert_type(worker.stop(timeout=30), bool)
with App(broker='amqp://guest:guest@localhost:5672//') as scoped:
    assert_type(scoped, App)
client.close()
app.close()
