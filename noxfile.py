"""Sessions for the checks pika_rpc runs (``pip install nox``, then ``nox -l`` to list them).

CI (``.ci/run``) runs README's test command on one Python, then the checks that README lists
(lint, typing, build, docs, the pika contract on the lowest pika): the same commands as the
sessions here. The other sessions are for a developer's machine:

* ``tests``: the whole suite on every Python 3.9-3.13 found on the machine (missing ones are
  skipped); RabbitMQ must answer (``AMQP_URL``, localhost, or Docker);
* ``pika``: the pika-contract tests against the lowest and the newest pika accepted;
* ``lint``, ``typing``, ``docs``, ``build``: as in CI;
* ``interop``: ``scripts/interop_matrix.py`` (the interop tests against Celery 5.5, 5.6, 5.7);
* ``bench``: ``scripts/bench.py --quick``.
"""

from __future__ import annotations

import glob

import nox

nox.options.error_on_missing_interpreters = False
nox.options.sessions = ['lint', 'tests', 'pika']

PYTHONS = ['3.9', '3.10', '3.11', '3.12', '3.13']
#: The pika range in install_requires, by its ends (the contract tests run against both).
PIKA_LOWEST, PIKA_NEWEST = '1.3.0', '1.4.4'
CONTRACT_TESTS = ['tests/unit/test_pika_contract.py', 'tests/unit/test_deliveries.py']


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """README's test command."""
    session.install('-e', '.[test]')
    session.run('python', '-m', 'pytest', '-q', *session.posargs)


@nox.session
@nox.parametrize('pika', [PIKA_LOWEST, PIKA_NEWEST])
def pika(session: nox.Session, pika: str) -> None:
    """The tests that run pika's own frame reader, against one pika release."""
    session.install('pytest', 'pytest-timeout', f'pika=={pika}')
    session.install('--no-deps', '-e', '.')
    session.run('python', '-m', 'pytest', '-q', *CONTRACT_TESTS)


@nox.session
def lint(session: nox.Session) -> None:
    session.install('-e', '.[lint]')
    session.run('ruff', 'check', 'pika_rpc', 'tests', 'scripts', 'examples', 'noxfile.py')
    session.run(
        'ruff', 'format', '--check', 'pika_rpc', 'tests', 'scripts', 'examples', 'noxfile.py'
    )


@nox.session
def typing(session: nox.Session) -> None:
    """The package (pika read from its own annotations), then user code against its types."""
    session.install('-e', '.[typing]')
    session.run('mypy', 'pika_rpc')
    session.run('mypy', '--strict', 'tests/typing/')


@nox.session
def docs(session: nox.Session) -> None:
    session.install('-e', '.[docs]')
    session.run('sphinx-build', '-W', '-n', '-b', 'html', 'docs', 'build/docs')


@nox.session
def build(session: nox.Session) -> None:
    """The sdist and wheel, checked; the wheel installed in a fresh environment."""
    session.install('build', 'twine')
    session.run('rm', '-rf', 'dist', external=True)
    session.run('python', '-m', 'build')
    session.run('twine', 'check', '--strict', *glob.glob('dist/*'))


@nox.session
def interop(session: nox.Session) -> None:
    session.install('-e', '.[test]')
    session.run('python', 'scripts/interop_matrix.py', *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    session.install('-e', '.[test,bench]')
    session.run('python', 'scripts/bench.py', '--quick', *session.posargs)
