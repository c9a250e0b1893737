"""What ``import pika_rpc`` costs a fresh process: the package's public names load lazily
(PEP 562), the optional serializers and the compressors at their first use.

Each check runs in a fresh interpreter (``sys.modules`` of this one already holds them all).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import pika_rpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter with this tree first on the path; it prints one
    JSON value, returned here."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    out = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


HEAVY = (
    'pika',
    'yaml',
    'msgpack',
    'pickle',
    'bz2',
    'lzma',
    'ssl',
    'dataclasses',
    'random',
    'pika_rpc.worker',
    'pika_rpc._request',
)


def test_import_pika_rpc_imports_neither_pika_nor_the_optional_serializers():
    loaded = _fresh(
        f"""
        import json, sys
        import pika_rpc
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
        """
    )
    assert loaded == []


def test_sending_a_task_needs_no_worker_yaml_msgpack_or_compressors():
    """What a client script loads up to its first publish (the broker is not contacted:
    encoding the task message is all that runs). pika itself imports ssl."""
    loaded = _fresh(
        f"""
        import json, sys
        from pika_rpc import App, protocol, serialization
        App(broker='amqp://guest:guest@127.0.0.1:5672//')
        headers, props, body = protocol.task_message('t', (1, 2), {{}}, task_id='x', reply_to='r')
        serialization.dumps(body, 'json')
        print(json.dumps([m for m in {HEAVY!r} if m not in ('pika', 'ssl') and m in sys.modules]))
        """
    )
    assert loaded == []


def test_every_public_name_resolves_and_from_import_works():
    for name in pika_rpc.__all__:
        assert getattr(pika_rpc, name) is not None, name
    from pika_rpc import App, TimeoutError, Worker, states  # noqa: F401

    assert App.__module__ == 'pika_rpc.app'
    assert TimeoutError.__module__ == 'pika_rpc.errors'
    assert states.SUCCESS == 'SUCCESS'


def test_dir_lists_the_public_names_before_they_are_loaded():
    names = _fresh(
        """
        import json, pika_rpc
        print(json.dumps(dir(pika_rpc)))
        """
    )
    assert set(pika_rpc.__all__) <= set(names)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match='no attribute'):
        pika_rpc.NoSuchName  # noqa: B018
    with pytest.raises(ImportError):
        from pika_rpc import NoSuchName  # noqa: F401


def test_star_import_gives_every_public_name():
    names = _fresh(
        """
        import json
        ns = {}
        exec('from pika_rpc import *', ns)
        print(json.dumps(sorted(k for k in ns if not k.startswith('__b'))))
        """
    )
    assert set(pika_rpc.__all__) <= set(names)


def test_yaml_and_msgpack_register_at_first_use_by_name_or_content_type():
    got = _fresh(
        """
        import json, sys
        from pika_rpc import serialization as s
        before = [m for m in ('yaml', 'msgpack') if m in sys.modules]
        ctype, enc, body = s.dumps({'a': [1, 2]}, 'yaml')
        by_type = s.loads(body, ctype, enc, accept=[ctype])
        accept = sorted(s.prepare_accept_content(['msgpack']))
        print(json.dumps([before, ctype, by_type, accept]))
        """
    )
    pytest.importorskip('yaml')
    pytest.importorskip('msgpack')
    assert got == [[], 'application/x-yaml', {'a': [1, 2]}, ['application/x-msgpack']]


def test_a_yaml_body_decodes_in_a_process_that_never_named_yaml():
    pytest.importorskip('yaml')
    got = _fresh(
        """
        import json
        from pika_rpc import serialization as s
        print(json.dumps(s.loads(b'a: 1\\n', 'application/x-yaml', 'utf-8',
                                 accept=['application/x-yaml'])))
        """
    )
    assert got == {'a': 1}


def test_a_codec_registered_first_under_a_lazy_name_is_kept():
    got = _fresh(
        """
        import json
        from pika_rpc import serialization as s
        s.register('yaml', 'application/x-yaml', 'utf-8', lambda o: 'MINE', lambda d: 'mine')
        ctype, enc, body = s.dumps(1, 'yaml')
        print(json.dumps([body.decode(), s.loads(body, ctype, enc, accept=['yaml'])]))
        """
    )
    assert got == ['MINE', 'mine']


def test_an_unknown_serializer_name_lists_the_lazy_ones_too():
    pytest.importorskip('yaml')
    got = _fresh(
        """
        import json
        from pika_rpc import serialization as s
        try:
            s.prepare_accept_content(['nope'])
        except ValueError as exc:
            print(json.dumps(str(exc)))
        """
    )
    assert 'nope' in got and 'yaml' in got and 'json' in got


@pytest.mark.parametrize('method', ['zlib', 'gzip', 'bzip2', 'bz2', 'lzma', 'xz'])
def test_compressors_load_at_first_use_and_round_trip(method):
    from pika_rpc import message

    body, header = message.compress(b'x' * 1000, method)
    assert len(body) < 1000
    assert message.decompress(body, header) == b'x' * 1000


def test_an_unknown_compression_is_still_refused():
    from pika_rpc import message
    from pika_rpc.errors import DecodeError

    with pytest.raises(ValueError, match='unknown compression'):
        message.compress(b'x', 'brotli')
    with pytest.raises(DecodeError, match='unknown compression'):
        message.decompress(b'x', 'application/x-brotli')
