"""A TLS-terminating proxy in front of a plaintext RabbitMQ, with a throwaway CA.

:class:`TLSProxy` makes, with the ``openssl`` command, a CA and a server certificate for
``127.0.0.1`` and ``localhost`` (in ``workdir``, valid two days), listens with TLS on a free
loopback port and forwards the decrypted stream to the broker. It is a
:class:`~faultproxy.FaultProxy` underneath, so pause/cut/refuse and the publish counter work over
TLS too. Clients trust it by loading :attr:`TLSProxy.ca_file`.

The certificates carry the extensions strict X.509 checking wants (CA basic constraints and key
usage, subject/authority key identifiers, subjectAltName), so they verify under Python 3.13's
``VERIFY_X509_STRICT`` default too.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from typing import List

from tests.faultproxy import FaultProxy, _retarget

__all__ = ['TLSProxy', 'make_certificates']

_CA_CONFIG = """\
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = pika_rpc throwaway test CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def make_certificates(workdir: str) -> dict:
    """Write a CA and a server certificate for 127.0.0.1/localhost into ``workdir``.

    Returns ``{'ca_file', 'cert_file', 'key_file'}`` paths. Blocks while ``openssl`` runs.

    Raises:
        RuntimeError: no ``openssl`` command, or it failed (its stderr is in the message).
    """
    if shutil.which('openssl') is None:
        raise RuntimeError('TLSProxy needs the openssl command (apt-get install openssl)')
    workdir = os.fspath(workdir)

    def path(name: str) -> str:
        return os.path.join(workdir, name)

    with open(path('ca.cnf'), 'w') as f:
        f.write(_CA_CONFIG)
    with open(path('server.ext'), 'w') as f:
        f.write(_SERVER_EXTENSIONS)
    ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
    _openssl(
        [
            'req',
            '-x509',
            *ec,
            '-days',
            '2',
            '-config',
            path('ca.cnf'),
            '-keyout',
            path('ca.key'),
            '-out',
            path('ca.pem'),
        ]
    )
    _openssl(
        [
            'req',
            '-new',
            *ec,
            '-subj',
            '/CN=localhost',
            '-keyout',
            path('server.key'),
            '-out',
            path('server.csr'),
        ]
    )
    _openssl(
        [
            'x509',
            '-req',
            '-in',
            path('server.csr'),
            '-days',
            '2',
            '-sha256',
            '-CA',
            path('ca.pem'),
            '-CAkey',
            path('ca.key'),
            '-set_serial',
            '0x1',
            '-extfile',
            path('server.ext'),
            '-out',
            path('server.pem'),
        ]
    )
    return {
        'ca_file': path('ca.pem'),
        'cert_file': path('server.pem'),
        'key_file': path('server.key'),
    }


def _openssl(args: List[str]) -> None:
    proc = subprocess.run(['openssl', *args], capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise RuntimeError(f'openssl {args[0]} failed ({proc.returncode}): {proc.stderr.strip()}')


class TLSProxy(FaultProxy):
    """TLS on ``127.0.0.1:port`` -> plaintext ``target_host:target_port``.

    Certificates are made in the constructor (so :attr:`ca_file` is usable before
    :meth:`start`). ``start``/``stop``/context manager and every fault control are
    :class:`FaultProxy`'s.
    """

    def __init__(self, target_host: str, target_port: int, workdir: str) -> None:
        files = make_certificates(workdir)
        self.ca_file: str = files['ca_file']
        self.cert_file: str = files['cert_file']
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(files['cert_file'], files['key_file'])
        super().__init__(target_host, target_port, ssl_context=context)

    def url(self, base_url: str) -> str:
        """``base_url`` pointed at this proxy, as ``amqps://`` (user, password, vhost kept)."""
        return _retarget(base_url, self.listen_host, self.port, scheme='amqps')

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting only :attr:`ca_file`, hostname checks on."""
        return ssl.create_default_context(cafile=self.ca_file)
