"""A raw-pika publisher in another process: results arrive as from a Celery worker.

``Publisher`` (driver side) starts ``scripts/bench.py --publisher --url URL`` and talks to
it with one JSON command a line on its stdin; it answers with JSON lines on its stdout.

The process (``publisher_main``) uses pika's asynchronous adapter (``SelectConnection``,
public API): a publish is buffered and written when the loop turns, so a batch goes out in
a few writes and confirms are pipelined. (``BlockingChannel.basic_publish`` flushes the
socket per message, which capped a publisher at ~10-16k messages/s on 2 cores and made it,
not the clients measured, the bound of the ``threads`` figures.) Its channels:

* ``plain``: no confirms, as a Celery worker publishes results;
* ``confirmed``: confirm mode, each ack or nack read with ``time.monotonic()`` (one clock
  for every process of the machine, so the measured process can compare);
* ``own``: consumes an exclusive queue of its own (a large result sent "elsewhere").

Commands:

* ``{"op": "results", "queues": [...], "prefix": P, "start": S, "count": C, "ack": bool,
  "prepare": bool}``: the results of tasks S..S+C-1 (id ``task_ids(P, k, 1)``, value k) to
  ``queues[k % len]`` on ``plain``. With ``ack``, after one round trip it prints ``{"done":
  C, "seconds": publish time}``. With ``prepare`` it encodes them, prints ``{"prepared":
  C}`` and publishes them at ``GO`` (the encoding stays out of the measured interval).
* ``{"op": "large", "queue": Q, "task_id": T, "size": N, "small": [[queue, id], ...]}``:
  encodes T's result (N characters) and the small ones, prints ``{"prepared": N}``; at
  ``GO`` publishes the big one, then the small ones right behind it, on ``confirmed``;
  prints ``{"go": t, "confirmed": t_big, "all_confirmed": t_all, "received": t_own}``
  (monotonic readings) once all are confirmed. ``Q`` = ``"@self"``: the big one goes to the
  ``own`` queue, and ``received`` is when it came back.
* ``END`` (or end of input) closes the connection and exits.
"""

from __future__ import annotations

import json
import os
import queue as _queue
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .harness import ENTRY, child_env
from .rawpika import raw_parameters, result_body, result_properties, task_ids

LARGE_TIMEOUT = 120.0  # a large batch not confirmed by then is reported with None


class Publisher:
    """The publisher process, started and ready on return (``RuntimeError`` otherwise)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, ENTRY, '--publisher', '--url', url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self._lines: 'Any' = _queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.read(timeout)  # {"ready": pid}

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def read(self, timeout: float) -> Dict[str, Any]:
        """Its next answer; ``RuntimeError`` when it is silent ``timeout`` s or exited."""
        try:
            item = self._lines.get(timeout=timeout)
        except _queue.Empty:
            raise RuntimeError(f'publisher silent for {timeout} s') from None
        if item is None:
            raise RuntimeError('publisher exited')
        return item

    def _send(self, line: str) -> None:
        self.proc.stdin.write(line + '\n')
        self.proc.stdin.flush()

    def publish(self, queues: Sequence[str], prefix: str, start: int, count: int) -> None:
        """Publish results now (no answer)."""
        self._send(
            json.dumps(
                {
                    'op': 'results',
                    'queues': list(queues),
                    'prefix': prefix,
                    'start': start,
                    'count': count,
                }
            )
        )

    def prepare(
        self, queues: Sequence[str], prefix: str, start: int, count: int, timeout: float = 60.0
    ) -> None:
        """Have it encode results now; ``go()`` publishes them, then ``read()`` the timing."""
        self._send(
            json.dumps(
                {
                    'op': 'results',
                    'queues': list(queues),
                    'prefix': prefix,
                    'start': start,
                    'count': count,
                    'ack': True,
                    'prepare': True,
                }
            )
        )
        self.read(timeout)  # {"prepared": count}

    def prepare_large(
        self,
        queue: str,
        task_id: str,
        size: int,
        small: Sequence[Tuple[str, str]] = (),
        timeout: float = 60.0,
    ) -> None:
        """Have it encode a large result (and small ones) now; ``go()`` publishes them."""
        self._send(
            json.dumps(
                {
                    'op': 'large',
                    'queue': queue,
                    'task_id': task_id,
                    'size': size,
                    'small': [list(s) for s in small],
                }
            )
        )
        self.read(timeout)  # {"prepared": size}

    def go(self) -> None:
        self._send('GO')

    def close(self, timeout: float = 30.0) -> None:
        try:
            self._send('END')
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---------------------------------------------------------------------- the process
def _say(item: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(item) + '\n')
    sys.stdout.flush()


class _Process:
    """The publisher process's state; every method runs on the ioloop of its connection."""

    def __init__(self, url: str) -> None:
        import pika

        self.conn = pika.SelectConnection(
            raw_parameters(url),
            on_open_callback=self._connected,
            on_open_error_callback=self._failed,
            on_close_callback=lambda conn, exc: conn.ioloop.stop(),
        )
        self.plain: Any = None
        self.confirmed: Any = None
        self.own_queue: Optional[str] = None
        self.received: Dict[str, float] = {}
        self.acks: List[Tuple[float, int, bool]] = []
        self.tag = 0
        self.after_go: Any = None
        self.large: Optional[Dict[str, Any]] = None
        self._stdin = b''
        self._channels_ready = 0

    # -------------------------------------------------------------- set-up
    def _failed(self, conn: Any, exc: BaseException) -> None:
        sys.stderr.write(f'publisher: cannot connect: {exc!r}\n')
        conn.ioloop.stop()

    def _connected(self, conn: Any) -> None:
        conn.channel(on_open_callback=self._plain_open)
        conn.channel(
            on_open_callback=lambda ch: ch.confirm_delivery(
                self._on_confirm, callback=lambda frame: self._confirmed_open(ch)
            )
        )
        conn.channel(
            on_open_callback=lambda ch: ch.queue_declare(
                '', exclusive=True, auto_delete=True, callback=lambda frame: self._own(ch, frame)
            )
        )

    def _plain_open(self, ch: Any) -> None:
        self.plain = ch
        self._channel_ready()

    def _confirmed_open(self, ch: Any) -> None:
        self.confirmed = ch
        self._channel_ready()

    def _own(self, ch: Any, frame: Any) -> None:
        self.own_queue = frame.method.queue
        ch.basic_consume(
            self.own_queue,
            self._on_own,
            auto_ack=True,
            callback=lambda frame: self._channel_ready(),
        )

    def _channel_ready(self) -> None:
        """Once the three are: read commands, say ready."""
        self._channels_ready += 1
        if self._channels_ready == 3:
            self.conn.ioloop.add_handler(0, self._on_stdin, self.conn.ioloop.READ)
            _say({'ready': os.getpid()})

    # -------------------------------------------------------------- commands
    def _on_stdin(self, fd: int, events: int) -> None:
        data = os.read(fd, 65536)
        if not data:
            self._end()
            return
        self._stdin += data
        while b'\n' in self._stdin:
            line, self._stdin = self._stdin.split(b'\n', 1)
            line = line.strip()
            if line:
                self._command(line.decode())

    def _command(self, line: str) -> None:
        if line == 'END':
            self._end()
        elif line == 'GO':
            go, self.after_go = self.after_go, None
            if go is not None:
                go()
        else:
            cmd = json.loads(line)
            if cmd['op'] == 'results':
                self._results(cmd)
            else:
                self._large(cmd)

    def _end(self) -> None:
        self.conn.ioloop.remove_handler(0)
        if self.conn.is_open:
            self.conn.close()
        else:
            self.conn.ioloop.stop()

    def _results(self, cmd: Dict[str, Any]) -> None:
        queues, prefix, start, count = cmd['queues'], cmd['prefix'], cmd['start'], cmd['count']
        batch = []
        for k in range(start, start + count):
            tid = task_ids(prefix, k, 1)[0]
            batch.append((queues[k % len(queues)], result_body(tid, k), result_properties(tid)))

        def publish() -> None:
            t0 = time.perf_counter()
            for queue, body, props in batch:
                self.plain.basic_publish('', queue, body, props)
            if cmd.get('ack'):  # one round trip behind the publishes: all reached it
                self.plain.queue_declare(
                    queues[0],
                    passive=True,
                    callback=lambda frame: _say(
                        {'done': count, 'seconds': time.perf_counter() - t0}
                    ),
                )

        if cmd.get('prepare'):
            self.after_go = publish
            _say({'prepared': count})
        else:
            publish()

    def _large(self, cmd: Dict[str, Any]) -> None:
        big_queue = self.own_queue if cmd['queue'] == '@self' else cmd['queue']
        tid = cmd['task_id']
        batch = [(big_queue, result_body(tid, 'x' * cmd['size']), result_properties(tid))]
        batch += [
            (q, result_body(t, i), result_properties(t))
            for i, (q, t) in enumerate(cmd.get('small') or ())
        ]

        def publish() -> None:
            del self.acks[:]
            first, last = self.tag + 1, self.tag + len(batch)
            self.large = {
                'first': first,
                'last': last,
                'task_id': tid,
                'own': big_queue == self.own_queue,
                'go': time.monotonic(),
            }
            for queue, body, props in batch:
                self.confirmed.basic_publish('', queue, body, props)
            self.tag = last
            self.large['timer'] = self.conn.ioloop.call_later(
                LARGE_TIMEOUT, lambda: self._large_done(force=True)
            )

        self.after_go = publish
        _say({'prepared': cmd['size']})

    def _on_confirm(self, frame: Any) -> None:
        self.acks.append((time.monotonic(), frame.method.delivery_tag, frame.method.multiple))
        self._large_done()

    def _on_own(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        self.received[props.correlation_id] = time.monotonic()
        self._large_done()

    def _confirmed(self, tag: int) -> Optional[float]:
        return next(
            (at for at, n, multiple in self.acks if n == tag or (multiple and n >= tag)), None
        )

    def _large_done(self, force: bool = False) -> None:
        big = self.large
        if big is None:
            return
        if not force and (
            self._confirmed(big['last']) is None
            or (big['own'] and big['task_id'] not in self.received)
        ):
            return
        self.large = None
        if not force:
            self.conn.ioloop.remove_timeout(big['timer'])
        _say(
            {
                'go': big['go'],
                'confirmed': self._confirmed(big['first']),
                'all_confirmed': self._confirmed(big['last']),
                'received': self.received.pop(big['task_id'], None),
            }
        )


def publisher_main(url: str) -> None:
    """The publisher process (``scripts/bench.py --publisher --url URL``): until ``END``."""
    process = _Process(url)
    process.conn.ioloop.start()
