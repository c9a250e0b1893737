"""Serializers (json, msgpack, yaml, pickle) and the exception codec, wire-compatible with kombu.

Contracts (``docs/wire-format.rst``: JSON envelopes, Exceptions):

* ``dumps(obj, serializer)`` returns ``(content_type, content_encoding, body_bytes)``.
  JSON is written as kombu writes it: ``", "``/``": "`` separators, non-ASCII escaped, and
  values plain JSON cannot hold wrapped in ``{"__type__": marker, "__value__": payload}``
  envelopes (datetime, date, time, Decimal, UUID, bytes). ``NaN``/``Infinity`` are written as
  Python's json writes them, as kombu does. Anything else that cannot be encoded raises
  :class:`~pika_rpc.errors.EncodeError` naming the type.
* ``loads(body, content_type, content_encoding, accept)`` checks the content type against
  ``accept`` first (``None`` = JSON only, never "everything"), then decodes. For bad input
  it raises only :class:`~pika_rpc.errors.PikaRPCError` subclasses: ``ContentDisallowed``
  for a type outside ``accept``, ``DecodeError`` for everything else (bad bytes, bad JSON,
  unknown envelope marker, a missing content type). A message without a content type is a
  ``DecodeError``: this module has no "raw bytes" serializer.
* msgpack uses kombu's settings (``use_bin_type``, ``raw=False``) with the same envelopes
  for datetime/date/time/Decimal/UUID (kombu's msgpack cannot send those at all); bytes stay
  native msgpack ``bin``. yaml uses ``safe_dump``/``safe_load`` only (tuples become lists).
  Both are registered only when their package imports. pickle is registered but is accepted
  only when an accept list names it explicitly.

Exceptions (``exception_to_dict``/``exception_from_dict``) are rebuilt **without importing
anything**: see :func:`exception_from_dict` for the resolution order. Unknown classes are
synthesized; their ``__module__`` is the message's ``exc_module`` (this module's name when
that is null), so encoding the rebuilt exception again gives the same ``exc_type`` and
``exc_module``. Synthesized classes are cached per ``(exc_module, exc_type)``, bounded at
``_SYNTH_CACHE_MAX`` entries (oldest dropped), so one name gives one class while cached.

Threads and fork: every function is thread-safe. The module's locks are made anew in a
forked child (``os.register_at_fork``), so a lock held by a parent thread at the fork cannot
block the child's first encode or decode.
"""

from __future__ import annotations

import base64
import builtins
import collections
import inspect
import json
import logging
import os
import pickle
import sys
import threading
import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Callable, Dict, FrozenSet, Iterable, NamedTuple, Optional, Tuple

from . import errors
from .errors import ContentDisallowed, DecodeError, EncodeError, PikaRPCError, SecurityError

LOGGER = logging.getLogger(__name__)

__all__ = [
    'register',
    'dumps',
    'loads',
    'prepare_accept_content',
    'JSON_CONTENT_TYPE',
    'exception_to_dict',
    'exception_from_dict',
    'register_exception',
    'unregister_exception',
]

JSON_CONTENT_TYPE = 'application/json'
DEFAULT_ACCEPT: FrozenSet[str] = frozenset({JSON_CONTENT_TYPE})
_SYNTH_CACHE_MAX = 1024
_BINARY_ENCODINGS = ('binary', 'ascii-8bit')  # never decoded to text (as kombu)


# --------------------------------------------------------------------------- envelopes


def _as(marker: str, value: Any) -> Dict[str, Any]:
    return {'__type__': marker, '__value__': value}


def _envelope(o: Any, *, with_bytes: bool) -> Any:
    """Return the envelope for ``o``, or raise EncodeError. ``__json__()`` wins, as in kombu."""
    reducer = getattr(o, '__json__', None)
    if reducer is not None and callable(reducer):
        return reducer()
    if isinstance(o, datetime):  # before date: a datetime is also a date
        return _as('datetime', o.isoformat())
    if isinstance(o, date):
        return _as('date', o.isoformat())
    if isinstance(o, time):
        return _as('time', o.isoformat())
    if isinstance(o, Decimal):
        return _as('decimal', str(o))
    if isinstance(o, uuid.UUID):
        return _as('uuid', {'hex': o.hex})
    if with_bytes and isinstance(o, (bytes, bytearray, memoryview)):
        raw = bytes(o)
        try:
            return _as('bytes', raw.decode('utf-8'))
        except UnicodeDecodeError:
            return _as('base64', base64.b64encode(raw).decode('ascii'))
    raise EncodeError(f'Object of type {type(o).__qualname__} is not serializable')


def _uuid_from(v: Any) -> uuid.UUID:
    if not isinstance(v, dict) or not isinstance(v.get('hex'), str):
        raise TypeError(f'uuid envelope needs {{"hex": str}}, got {v!r}')
    return uuid.UUID(hex=v['hex'])


def _text_only(fn: Callable[[str], Any]) -> Callable[[Any], Any]:
    def decode(v: Any) -> Any:
        if not isinstance(v, str):
            raise TypeError(f'expected a string payload, got {type(v).__name__}')
        return fn(v)

    return decode


_DECODERS: Dict[str, Callable[[Any], Any]] = {
    'datetime': _text_only(datetime.fromisoformat),
    'date': _text_only(lambda v: datetime.fromisoformat(v).date()),
    'time': _text_only(time.fromisoformat),
    'decimal': _text_only(Decimal),
    'uuid': _uuid_from,
    'bytes': _text_only(lambda v: v.encode('utf-8')),
    'base64': _text_only(lambda v: base64.b64decode(v.encode('ascii'), validate=True)),
}


def _decode_envelope(obj: Dict[Any, Any]) -> Any:
    """Object hook: an object with exactly the keys __type__ and __value__ is an envelope."""
    if len(obj) != 2 or obj.keys() != {'__type__', '__value__'}:
        return obj
    marker = obj['__type__']
    decoder = _DECODERS.get(marker) if isinstance(marker, str) else None
    if decoder is None:
        raise DecodeError(f'unknown envelope marker {marker!r}')
    try:
        return decoder(obj['__value__'])
    except Exception as exc:
        raise DecodeError(f'bad {marker!r} envelope value {obj["__value__"]!r}: {exc}') from exc


# --------------------------------------------------------------------------- codecs


def _json_default(obj: Any) -> Any:
    return _envelope(obj, with_bytes=True)


# Built once (json.dumps with any option builds a new encoder per call); stateless.
_JSON_ENCODER = json.JSONEncoder(default=_json_default, separators=(', ', ': '), ensure_ascii=True)


def _json_dumps(obj: Any) -> str:
    try:
        return _JSON_ENCODER.encode(obj)
    except EncodeError:
        raise
    except (TypeError, ValueError, RecursionError) as exc:  # non-str keys, cycles, depth
        raise EncodeError(f'cannot encode as JSON: {exc}') from exc


def _json_loads(data: Any) -> Any:
    if isinstance(data, bytes):
        data = data.decode('utf-8')
    if '"__type__"' not in data:  # no envelope can be in it: the C decoder alone
        return _PLAIN_JSON_DECODER.decode(data)
    return _JSON_DECODER.decode(data)


class _Codec(NamedTuple):
    name: str
    content_type: str
    content_encoding: str
    encoder: Callable[[Any], Any]
    decoder: Callable[[Any], Any]


_lock = threading.Lock()
_by_name: Dict[str, _Codec] = {}
_by_type: Dict[str, _Codec] = {}


def register(
    name: str,
    content_type: str,
    content_encoding: str,
    encoder: Callable[[Any], Any],
    decoder: Callable[[Any], Any],
) -> None:
    """Register (or replace) a serializer.

    Args:
        name: short name used by ``dumps`` and accept lists (``'json'``).
        content_type: MIME type written on messages (``'application/json'``).
        content_encoding: a text codec (``'utf-8'``) or ``'binary'``.
        encoder: ``obj -> str | bytes``; a ``str`` is encoded with ``content_encoding``.
            It should raise :class:`EncodeError` for values it cannot hold.
        decoder: receives ``bytes`` for a ``'binary'`` serializer; otherwise ``str`` decoded
            with the message's content encoding (``bytes`` when the message names none).
            It returns the value; any exception it raises becomes a :class:`DecodeError`
            in :func:`loads`.
    """
    codec = _Codec(name, content_type, content_encoding, encoder, decoder)
    with _lock:
        _by_name[name] = codec
        _by_type[content_type] = codec


_prepared: Dict[FrozenSet[str], FrozenSet[str]] = {}


def prepare_accept_content(names: Optional[Iterable[str]]) -> FrozenSet[str]:
    """Map serializer names and content types to a set of content types.

    ``None`` gives the default (JSON only). A string containing ``/`` is taken as a content
    type as it is; any other string must be a registered serializer name.

    Raises:
        ValueError: a name that is not registered (e.g. ``'msgpack'`` without msgpack).
    """
    if names is None:
        return DEFAULT_ACCEPT
    if isinstance(names, frozenset) and names in _prepared:  # once per message: keep it cheap
        return _prepared[names]
    if isinstance(names, str):
        names = [names]
    out = set()
    for n in names:
        if '/' in n:
            out.add(n)
        elif n in _by_name:
            out.add(_by_name[n].content_type)
        else:
            raise ValueError(
                f'no serializer registered under the name {n!r} '
                f'(registered: {", ".join(sorted(_by_name))})'
            )
    prepared = frozenset(out)
    if isinstance(names, frozenset) and len(_prepared) < 64:
        _prepared[names] = prepared
    return prepared


def dumps(obj: Any, serializer: str = 'json') -> Tuple[str, str, bytes]:
    """Serialize ``obj``; return ``(content_type, content_encoding, body)``.

    Raises:
        EncodeError: ``obj`` (or something inside it) cannot be encoded; names the type.
        ValueError: ``serializer`` is not a registered name.
    """
    codec = _by_name.get(serializer)
    if codec is None:
        raise ValueError(f'no serializer registered under the name {serializer!r}')
    try:
        payload = codec.encoder(obj)
    except EncodeError:
        raise
    except Exception as exc:
        raise EncodeError(f'{serializer} cannot encode a {type(obj).__qualname__}: {exc}') from exc
    if isinstance(payload, str):
        enc = 'utf-8' if codec.content_encoding == 'binary' else codec.content_encoding
        payload = payload.encode(enc)
    return codec.content_type, codec.content_encoding, bytes(payload)


def loads(
    body: Any,
    content_type: Optional[str],
    content_encoding: Optional[str],
    accept: Optional[Iterable[str]] = None,
) -> Any:
    """Decode a message body after checking its content type against ``accept``.

    Args:
        body: ``bytes`` (``bytearray``/``memoryview``/``str`` are accepted too).
        accept: serializer names or content types; ``None`` means JSON only.

    Raises:
        ContentDisallowed: ``content_type`` is not accepted; names it and the accepted list.
        DecodeError: no content type, no decoder for it, bad encoding or a bad body.
    """
    accepted = prepare_accept_content(accept)
    if not content_type:
        raise DecodeError('message has no content type; cannot decode its body')
    if content_type not in accepted:
        raise ContentDisallowed(
            f'refusing to decode content type {content_type!r}: accepted are {sorted(accepted)!r}'
        )
    codec = _by_type.get(content_type)
    if codec is None:
        raise DecodeError(f'no decoder registered for content type {content_type!r}')
    if isinstance(body, (bytearray, memoryview)):
        body = bytes(body)
    elif not isinstance(body, (bytes, str)):
        raise DecodeError(f'message body must be bytes, got {type(body).__qualname__}')
    try:
        if (
            isinstance(body, bytes)
            and codec.content_encoding != 'binary'
            and content_encoding
            and content_encoding not in _BINARY_ENCODINGS
        ):
            body = body.decode(content_encoding)
        return codec.decoder(body)
    except PikaRPCError:
        raise
    except Exception as exc:  # UnicodeDecodeError, LookupError, JSONDecodeError, ...
        raise DecodeError(
            f'cannot decode {content_type} body: {type(exc).__name__}: {exc}'
        ) from exc


# One decoder for every message: json.loads(object_hook=...) would build one per call.
_JSON_DECODER = json.JSONDecoder(object_hook=_decode_envelope)
_PLAIN_JSON_DECODER = json.JSONDecoder()
register('json', JSON_CONTENT_TYPE, 'utf-8', _json_dumps, _json_loads)
register(
    'pickle',
    'application/x-python-serialize',
    'binary',
    lambda o: pickle.dumps(o, protocol=pickle.DEFAULT_PROTOCOL),
    pickle.loads,
)

try:
    import msgpack as _msgpack
except ImportError:  # optional extra
    _msgpack = None  # type: ignore[assignment]
else:

    def _msgpack_dumps(obj: Any) -> bytes:
        return _msgpack.packb(
            obj, use_bin_type=True, datetime=False, default=lambda o: _envelope(o, with_bytes=False)
        )

    def _msgpack_loads(data: Any) -> Any:
        if isinstance(data, str):
            data = data.encode('utf-8')
        return _msgpack.unpackb(data, raw=False, object_hook=_decode_envelope)

    register('msgpack', 'application/x-msgpack', 'binary', _msgpack_dumps, _msgpack_loads)

try:
    import yaml as _yaml
except ImportError:  # optional extra
    _yaml = None  # type: ignore[assignment]
else:

    class _SafeDumper(_yaml.SafeDumper):
        """SafeDumper that writes tuples as lists (task args are tuples)."""

    _SafeDumper.add_representer(tuple, _yaml.SafeDumper.represent_list)

    def _yaml_dumps(obj: Any) -> str:
        return _yaml.dump(obj, Dumper=_SafeDumper)

    register('yaml', 'application/x-yaml', 'utf-8', _yaml_dumps, _yaml.safe_load)


# --------------------------------------------------------------------------- exceptions

_registered_exc: Dict[Tuple[str, str], type] = {}
_celery_names = {cls: name for name, cls in errors.CELERY_EXCEPTIONS.items()}
# Where Celery defines the classes we mirror; the rest are in (or re-exported by)
# celery.exceptions. Celery's worker writes the billiard ones as 'billiard.exceptions'.
_CELERY_MODULES = {'BacklogLimitExceeded': 'celery.backends.rpc'}
_MAPPED_PACKAGES = ('celery', 'billiard')
_synth_lock = threading.Lock()
_synthesized: 'collections.OrderedDict[Tuple[Optional[str], str], type]' = collections.OrderedDict()


def _after_fork_in_child() -> None:
    """New module locks: a forked child has only the forking thread, so a lock another
    thread of the parent held at the fork would stay held for ever (the dicts they guard
    are whole: the GIL keeps each of their operations atomic)."""
    global _lock, _synth_lock
    _lock, _synth_lock = threading.Lock(), threading.Lock()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def register_exception(cls: type) -> type:
    """Let results naming ``cls`` (by its ``__module__`` and ``__qualname__``) rebuild it.

    Usable as a class decorator; returns ``cls``.

    Raises:
        TypeError: ``cls`` is not an exception class.
    """
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        raise TypeError(f'register_exception() needs an exception class, got {cls!r}')
    with _lock:
        _registered_exc[(cls.__module__, cls.__qualname__)] = cls
    return cls


def unregister_exception(cls: type) -> None:
    """Undo :func:`register_exception` (no error if it was not registered)."""
    with _lock:
        _registered_exc.pop((cls.__module__, cls.__qualname__), None)


def exception_to_dict(exc: BaseException, serializer: str = 'json') -> Dict[str, Any]:
    """Encode an exception as Celery does: ``{"exc_type", "exc_message", "exc_module"}``.

    ``exc_message`` is the list of ``exc.args``; an argument that ``serializer`` cannot
    encode is replaced by its repr. pika_rpc's copies of Celery's exceptions
    (``errors.CELERY_EXCEPTIONS``) are written under Celery's names and modules
    (``celery.exceptions``; ``celery.backends.rpc`` for ``BacklogLimitExceeded``), so a Celery
    client rebuilds its own classes.
    """
    cls = type(exc)
    name = _celery_names.get(cls)
    if name is not None:
        exc_type, exc_module = name, _CELERY_MODULES.get(name, 'celery.exceptions')
    else:
        exc_type, exc_module = getattr(cls, '__qualname__', cls.__name__), cls.__module__
    return {
        'exc_type': exc_type,
        'exc_message': [_safe_arg(a, serializer) for a in exc.args],
        'exc_module': exc_module,
    }


def _safe_arg(arg: Any, serializer: str) -> Any:
    try:
        dumps(arg, serializer)
        return arg
    except Exception:
        try:
            return repr(arg)
        except Exception:
            return f'<unrepresentable {type(arg).__qualname__} object>'


def _walk(root: Any, dotted: str) -> Any:
    """Attribute walk that never runs code: no module ``__getattr__``, no descriptors."""
    obj = root
    for part in dotted.split('.'):
        obj = inspect.getattr_static(obj, part)  # AttributeError when missing
    return obj


_MISSING = object()


def _resolve(exc_module: Optional[str], exc_type: str, allow_loaded: bool) -> Any:
    """Find what a message names, in order; ``_MISSING`` when nothing matches."""
    if exc_module is None:
        return _MISSING
    with _lock:
        found = _registered_exc.get((exc_module, exc_type))
    if found is not None:
        return found
    candidates = []
    if exc_module == 'builtins':
        candidates.append(builtins)
    elif exc_module.split('.')[0] in _MAPPED_PACKAGES:
        if exc_type in errors.CELERY_EXCEPTIONS:
            return errors.CELERY_EXCEPTIONS[exc_type]
    elif exc_module == errors.__name__:
        if exc_type.split('.')[0] in errors.__all__:
            candidates.append(errors)
    if allow_loaded and exc_module in sys.modules:
        candidates.append(sys.modules[exc_module])
    for root in candidates:
        try:
            return _walk(root, exc_type)
        except AttributeError:
            continue
    return _MISSING


def _synthesize(exc_module: Optional[str], exc_type: str) -> type:
    key = (exc_module, exc_type)
    with _synth_lock:
        cls = _synthesized.get(key)
        if cls is not None:
            _synthesized.move_to_end(key)
            return cls
        try:
            cls = type(
                exc_type.rsplit('.', 1)[-1],
                (Exception,),
                {'__module__': exc_module or __name__, '__qualname__': exc_type},
            )
        except (TypeError, ValueError) as exc:  # e.g. a NUL in the name
            raise DecodeError(f'cannot make an exception class named {exc_type!r}: {exc}') from exc
        _synthesized[key] = cls
        if len(_synthesized) > _SYNTH_CACHE_MAX:
            _synthesized.popitem(last=False)
        return cls


def json_object(value: Any, what: str) -> Dict[Any, Any]:
    """``value`` if it is a dict (a JSON object), else ``DecodeError`` naming ``what``."""
    if not isinstance(value, dict):
        raise DecodeError(f'{what} must be a JSON object, got {type(value).__qualname__}')
    return value


def required_text(obj: Dict[Any, Any], key: str, what: str) -> str:
    """``obj[key]`` if it is a non-empty str, else ``DecodeError``: ``what`` and the value."""
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise DecodeError(f'{what}: {key} = {value!r}')
    return value


def exception_from_dict(d: Any, *, allow_loaded_modules: bool = True) -> Optional[BaseException]:
    """Rebuild an exception from Celery's dict, importing nothing.

    Resolution of ``(exc_module, exc_type)``, in order: classes given to
    :func:`register_exception`; ``builtins``; a ``celery.*`` or ``billiard.*`` module with a
    name in ``errors.CELERY_EXCEPTIONS`` (our local copies); public names of
    ``pika_rpc.errors``; with ``allow_loaded_modules``, a module already in ``sys.modules``,
    walking a dotted ``exc_type`` attribute by attribute, statically (no module
    ``__getattr__``, descriptor or property runs). A module not loaded is never imported.
    Nothing found (or ``exc_module`` null): an ``Exception`` subclass named ``exc_type`` is
    synthesized. The class is called as ``cls(*exc_message)`` for a list, ``cls(exc_message)``
    otherwise; if that raises, a plain ``Exception`` naming the class and arguments is returned.
    A resolved ``BaseException`` that is not an ``Exception`` (``SystemExit``,
    ``KeyboardInterrupt``, ``GeneratorExit``) is refused with ``SecurityError``, unlike Celery:
    a message from the network must not be able to stop the process that reads it.

    Returns:
        The exception, or ``None`` for a falsy ``d``. An exception instance is returned as is.

    Raises:
        DecodeError: ``d`` is not a dict, or has no usable ``exc_type`` / ``exc_module``.
        SecurityError: the name resolves to something that is not an exception class.
    """
    if not d:
        return None
    if isinstance(d, BaseException):
        return d
    exc_type = required_text(
        json_object(d, 'an exception'),
        'exc_type',
        'exception information must include the exception type',
    )
    exc_module = d.get('exc_module')
    if exc_module is not None and not isinstance(exc_module, str):
        raise DecodeError(f'exc_module must be a string or null, got {exc_module!r}')
    exc_msg = d.get('exc_message', '')
    cls = _resolve(exc_module, exc_type, allow_loaded_modules)
    if cls is _MISSING:
        cls = _synthesize(exc_module, exc_type)
    elif not (isinstance(cls, type) and issubclass(cls, Exception)):
        shown = exc_type if exc_module is None else f'{exc_module}.{exc_type}'
        raise SecurityError(f'Expected an exception class, got {shown} with payload {exc_msg}')
    try:
        if isinstance(exc_msg, (list, tuple)):
            return cls(*exc_msg)
        return cls(exc_msg)
    except Exception as exc:
        LOGGER.debug('cannot build %s.%s(%r): %r', exc_module, exc_type, exc_msg, exc)
        return Exception(f'{exc_module}.{exc_type}({exc_msg!r})')
