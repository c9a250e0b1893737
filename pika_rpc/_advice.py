"""What to do about a broker error: one sentence of advice for the errors newcomers meet.

``describe(exc)`` names a connect error fully (pika's ``AMQPConnectionError`` has an empty
``str()``: what happened is in its ``args``); ``reason(exc)`` says the same in the user's
terms (``'Connection refused'``), and ``where(params)`` names the addresses tried as masked
URLs (``amqp://guest:**@127.0.0.1:5672//``): the connect WARNINGs and ``ConnectionLost``
texts are made of these. ``connect_advice(exc, params)`` says what to
check or run for a failed connect; ``precondition_advice(text)`` for a 406 on a declare.
Each returns one sentence (capitalised, no final period) or ''. The I/O thread appends them
to the ``ConnectionLost`` / ``PreconditionFailed`` / ``TimeoutError`` it raises. Never a
password: only the user name, hosts, ports and vhost of the parameters are used.

Level 1: imports nothing from pika (exceptions are recognised by class name and text), so it
is testable without a broker. Pure functions: no I/O.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, List, Optional
from urllib.parse import quote

__all__ = ['describe', 'reason', 'where', 'connect_advice', 'precondition_advice']

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']*)' in "
    r"vhost '(?P<vhost>[^']*)': received (?P<asked>.+?) but current is (?P<current>.+?)\)?$"
)
_VHOST_NOT_FOUND = re.compile(r'vhost (?P<vhost>\S+) not found')
_VHOST_REFUSED = re.compile(
    r"access to vhost '(?P<vhost>[^']*)' refused for user '(?P<user>[^']*)'"
)


def describe(exc: BaseException) -> str:
    """``Type: text`` for an exception, using its ``args`` when ``str()`` is empty."""
    name = type(exc).__name__
    text = str(exc)
    if not text and exc.args:
        text = '; '.join(str(a) or repr(a) for a in exc.args)
    return f'{name}: {text}' if text else name


def reason(exc: BaseException, timeout: Optional[float] = None) -> str:
    """What went wrong with a connect attempt, in a few words a user recognises (no pika
    class names); ``describe(exc)`` when it is none of the known cases. ``timeout`` (the
    connection timeout) is named when the attempt timed out."""
    raw = _chain(exc)
    text = raw.lower()
    if _VHOST_NOT_FOUND.search(raw):
        return 'The vhost does not exist'
    if _VHOST_REFUSED.search(raw) or 'probableaccessdeniederror' in text:
        return 'Access to the vhost refused'
    if 'authenticationerror' in text or ('access_refused' in text and 'login' in text):
        return 'Login refused (ACCESS_REFUSED)'
    ssl = _SSL_DETAIL.search(raw)
    if ssl:
        return f'The TLS handshake failed ({ssl.group(0).strip()})'
    for needles, said in _REASONS:
        if any(n in text for n in needles):
            if said is _NO_ANSWER and timeout is not None:
                return f'{said} ({timeout:g} s)'
            return said
    return describe(exc)


# A peer that accepts and closes at once: an RST, or pika's check of the socket after it.
_NO_ANSWER = 'No answer within broker_connection_timeout'
_SSL_DETAIL = re.compile(r"\[SSL: [A-Z0-9_]+\][^'\")]*")
_RESET = ('connection reset', 'connectionreseterror', 'errno 104', 'getpeername() failed')
_REASONS = (
    (
        ('gaierror', 'name or service not known', 'nodename nor servname', 'name resolution'),
        'The host name does not resolve',
    ),
    (('connection refused', 'connectionrefusederror'), 'Connection refused'),
    (
        ('connection reset', 'connectionreseterror', 'errno 104'),
        'The connection was reset during the handshake',
    ),
    (('sslerror', 'ssl:', 'certificate'), 'The TLS handshake failed'),
    (
        ('incompatibleprotocolerror', 'streamlosterror'),
        'The peer closed the connection during the AMQP handshake',
    ),
    (('timeout', 'timed out'), _NO_ANSWER),
    (('no route to host', 'network is unreachable'), 'No route to the host'),
)


def where(params: Iterable[Any]) -> str:
    """The addresses tried, as URLs with the password masked (``;`` between them)."""
    urls = []
    for p in params:
        ssl = _field(p, 'ssl', 'ssl_options')
        user = _field(p, 'userid', 'username')
        if user is None:
            user = _field(_field(p, 'credentials') or {}, 'username')
        vhost = _field(p, 'virtual_host')
        vhost = '/' if vhost in (None, '/') else quote(vhost, safe='')
        host = str(_field(p, 'host'))
        host = f'[{host}]' if ':' in host else host
        urls.append(
            f'amqp{"s" if ssl else ""}://{quote(user or "guest", safe="")}:**@{host}:'
            f'{_field(p, "port")}/{vhost}'
        )
    return ';'.join(urls) or 'the broker'


def _chain(exc: BaseException) -> str:
    """Every class name and text in ``exc`` and what caused it, for matching."""
    parts: List[str] = []
    seen = 0
    current: Optional[BaseException] = exc
    while current is not None and seen < 5:
        parts.extend(c.__name__ for c in type(current).__mro__)
        parts.append(describe(current))
        parts.extend(repr(a) for a in current.args)
        current = current.__cause__ or current.__context__
        seen += 1
    return ' '.join(parts)


def _field(params: Any, *names: str) -> Any:
    for name in names:
        if isinstance(params, dict) and name in params:
            return params[name]
        value = getattr(params, name, None)
        if value is not None:
            return value
    return None


def _target(params: Iterable[Any]) -> tuple:
    """``(host:port list, vhost, user)`` from pika ``ConnectionParameters`` or option dicts."""
    params = list(params)
    hosts = ', '.join(f'{_field(p, "host")}:{_field(p, "port")}' for p in params) or 'the broker'
    first = params[0] if params else {}
    vhost = _field(first, 'virtual_host')
    user = _field(first, 'userid', 'username')
    if user is None:
        user = _field(_field(first, 'credentials') or {}, 'username')
    return hosts, vhost if vhost is not None else '/', user or 'guest'


def connect_advice(exc: BaseException, params: Iterable[Any] = ()) -> str:
    """What to do after a connect failed with ``exc``; '' when there is nothing useful to say.

    ``params`` are the addresses tried: pika ``ConnectionParameters`` or
    ``config.connection_options`` dicts (host, port, virtual_host, userid).
    """
    hosts, vhost, user = _target(params)
    raw = _chain(exc)
    text = raw.lower()
    match = _VHOST_REFUSED.search(raw)
    if match:
        return (
            f'User {match.group("user")!r} has no permissions on vhost '
            f'{match.group("vhost")!r}: grant them with `rabbitmqctl set_permissions -p '
            f"{match.group('vhost')} {match.group('user')} '.*' '.*' '.*'`, or use another "
            f'user in broker_url'
        )
    match = _VHOST_NOT_FOUND.search(raw)
    if match:
        name = match.group('vhost')
        return (
            f'The vhost {name!r} does not exist: create it with `rabbitmqctl add_vhost {name}` '
            f"and `rabbitmqctl set_permissions -p {name} {user} '.*' '.*' '.*'`, or fix the "
            f"vhost in broker_url (the path after host:port; '//' is the default vhost '/')"
        )
    if (
        'probableauthenticationerror' in text
        or 'authenticationerror' in text
        or ('access_refused' in text and 'login was refused' in text)
    ):
        hint = (
            " RabbitMQ lets 'guest' log in only from localhost: for a remote broker create a "
            'user (`rabbitmqctl add_user`, `set_permissions`).'
            if user == 'guest'
            else ''
        )
        return (
            f'ACCESS_REFUSED: the broker refused user {user!r} with this password: check the '
            f'user and password in broker_url (or $AMQP_URL); URL-encode special characters '
            f'(@ : / %).{hint}'
        )
    if 'probableaccessdeniederror' in text or 'access_refused' in text:
        return (
            f'Access to vhost {vhost!r} refused for user {user!r}: check the vhost in '
            f"broker_url and the user's permissions (`rabbitmqctl list_permissions -p "
            f'{vhost}`)'
        )
    if (
        'gaierror' in text
        or 'name or service not known' in text
        or 'nodename nor servname' in text
        or 'temporary failure in name resolution' in text
    ):
        return f'The host name in broker_url does not resolve ({hosts}): fix the host'
    if 'connection refused' in text or 'connectionrefusederror' in text:
        return (
            f'Nothing accepts connections at {hosts}: start RabbitMQ there (e.g. `docker run '
            f'-d -p 5672:5672 rabbitmq:3`) or fix the host and port in broker_url (or '
            f'$AMQP_URL); AMQP listens on 5672, amqps on 5671 (15672 is the web UI)'
        )
    if any(needle in text for needle in _RESET):
        return (
            f'Something at {hosts} accepts connections and closes them at once: RabbitMQ may '
            f'be starting, stopping or at its connection limit, or a proxy in front of it '
            f'has no broker behind it; check the broker (`rabbitmqctl status`, its log) and '
            f'the host and port in broker_url'
        )
    if 'sslerror' in text or 'ssl:' in text or 'certificate' in text:
        return (
            'The TLS handshake failed: check amqps:// is meant (port 5671), and the CA, '
            'certificate and key in broker_use_ssl'
        )
    if 'incompatibleprotocolerror' in text or 'streamlosterror' in text:
        return (
            f'The peer at {hosts} is not an AMQP 0-9-1 broker or dropped the handshake: '
            f'check the port (5672 for amqp://, 5671 for amqps://, not the 15672 web UI) and '
            f'that amqps:// is used only on a TLS port'
        )
    if 'timeout' in text or 'timed out' in text:
        return (
            f'No answer from {hosts} within broker_connection_timeout: check the host, the '
            f'port and any firewall, or raise broker_connection_timeout'
        )
    return ''


def _value(text: str) -> str:
    """A value as RabbitMQ writes it in a 406: ``'true'``, ``none``, ``the value '300000' of
    type 'signedint'``."""
    text = text.strip()
    typed = re.match(r"the value '(?P<v>.*)' of type '(?P<t>[^']*)'", text)
    if typed:
        return typed.group('v')
    if text == 'none':
        return '(none)'
    return text.strip("'")


_INVALID_PROPERTY = re.compile(
    r"invalid property '(?P<prop>[^']+)' for queue '(?P<name>[^']*)' in vhost '(?P<vhost>[^']*)'"
)
_INVALID_ARG = re.compile(
    r"invalid arg '(?P<arg>[^']+)' for queue '(?P<name>[^']*)' in vhost '(?P<vhost>[^']*)' "
    r'of queue type (?P<type>\S+)'
)
# RabbitMQ's property names in "invalid property" (a replicated queue refuses them), as the
# declaration option that asked for them and why the queue type has none.
_REPLICATED_REFUSES = {
    'exclusive-owner': ('exclusive=True', 'it outlives every connection, so no connection owns it'),
    'auto-delete': ('auto_delete=True', 'it is deleted only explicitly (use x-expires instead)'),
    'non-durable': ('durable=False', 'it is durable by design'),
}


def precondition_advice(text: str) -> str:
    """What to do about a 406 PRECONDITION_FAILED on a declare; '' when ``text`` is none of
    the cases known here.

    Three texts of RabbitMQ's, each with its own advice: an argument that clashes with the
    existing queue or exchange (``inequivalent arg``: it *exists* with other arguments), a
    property a quorum queue cannot have (``invalid property 'exclusive-owner'``,
    ``'auto-delete'``, ``'non-durable'``) and an argument its queue type does not take
    (``invalid arg 'x-max-priority' ... of queue type rabbit_quorum_queue``). The last two
    are refused whether or not the queue exists.
    """
    text = text.strip()
    match = _INEQUIVALENT.search(text)
    if match:
        return _inequivalent_advice(match)
    match = _INVALID_PROPERTY.search(text)
    if match:
        prop, name = match.group('prop', 'name')
        option, why = _REPLICATED_REFUSES.get(prop, (prop, 'its type does not have it'))
        return (
            f'RabbitMQ refuses {option} for queue {name!r} because it is a replicated queue '
            f'(x-queue-type quorum or stream): {why}. Declare it without {option}, or as a '
            f'classic queue (no x-queue-type) if it needs {option}'
        )
    match = _INVALID_ARG.search(text)
    if match:
        arg, name, kind = match.group('arg', 'name', 'type')
        kind = kind.replace('rabbit_', '').replace('_queue', '')
        return (
            f'A {kind} queue does not take the argument {arg}, so RabbitMQ refuses queue '
            f'{name!r} with it: declare it without {arg}, or as a classic queue (no '
            f'x-queue-type) if it needs {arg}'
        )
    if 'inequivalent arg' in text:
        return (
            'An entity of that name already exists with other arguments (durable, '
            'auto_delete, exclusive, x-expires, ...): declare it with the same arguments, use '
            'another name, or delete it first'
        )
    return ''


def _inequivalent_advice(match: Any) -> str:
    kind, name, arg, vhost = match.group('kind', 'name', 'arg', 'vhost')
    asked, current = (_value(v) for v in match.group('asked', 'current'))
    if kind == 'queue':
        delete = f'`rabbitmqctl -p {vhost} delete_queue {name}`; its messages go with it'
    else:
        delete = f'`rabbitmqadmin -V {vhost} delete exchange name={name}` or the management UI'
    hint = ''
    if arg == 'x-queue-type':
        hint = (
            f' (for pika_rpc to declare a {current} queue: task_default_queue_type / '
            f"task_create_missing_queue_type='{current}', Queue(..., queue_arguments="
            f"{{'x-queue-type': '{current}'}}) or `--queue-type {current}`)"
            if current in ('quorum', 'classic')
            else ''
        )
    return (
        f'{kind.capitalize()} {name!r} already exists with {arg}={current} and this '
        f'declaration asks {arg}={asked}: declare it with the same arguments as it has '
        f'({arg}={current}){hint}, use another name, or delete it ({delete}) and let it be '
        f'declared again'
    )
