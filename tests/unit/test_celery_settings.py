"""Celery's setting names: old names read, unimplemented ones warned about once, others refused."""

from __future__ import annotations

import logging
import types

import pytest

from pika_rpc import config
from pika_rpc._celery_settings import CELERY_DEFAULTS, CELERY_SETTINGS, OLD_NAMES
from pika_rpc.config import Settings

pytestmark = pytest.mark.timeout(30)


def test_the_list_is_celery_5_7s_own() -> None:
    celery = pytest.importorskip('celery')
    if not celery.__version__.startswith('5.7.'):
        pytest.skip(f"the list is Celery 5.7's; Celery {celery.__version__} is installed")
    defaults = pytest.importorskip('celery.app.defaults')
    assert CELERY_SETTINGS == dict(defaults._TO_OLD_KEY)
    assert OLD_NAMES == dict(defaults._TO_NEW_KEY)
    celerys = dict(defaults.DEFAULTS, result_expires=86400.0)
    assert CELERY_DEFAULTS == {k: celerys[k] for k in CELERY_SETTINGS}


def test_every_spec_carries_a_one_line_description_and_unpacks_as_a_pair() -> None:
    for name, spec in config._SPECS.items():
        default, validator = spec
        assert spec.default is default and spec.validator is validator
        assert spec.doc and '\n' not in spec.doc, name


def test_django_settings_with_the_celery_namespace_give_their_task_routes() -> None:
    routes = {'proj.tasks.*': {'queue': 'slow'}}
    django = types.SimpleNamespace(
        CELERY_TASK_ROUTES=routes,
        CELERY_TASK_DEFAULT_QUEUE='web',
        CELERY_TASK_CREATE_MISSING_QUEUES=False,
        INSTALLED_APPS=['proj'],
    )
    settings = Settings().from_object(django, namespace='CELERY')
    assert settings.task_routes == routes
    assert settings.task_default_queue == 'web'
    assert settings.task_create_missing_queues is False


def test_celerys_old_names_are_read_with_and_without_a_namespace() -> None:
    old = {'CELERY_ROUTES': {'a': 'q1'}, 'BROKER_URL': 'amqp://u:p@h:5672//'}
    for namespace in (None, 'CELERY'):
        settings = Settings().from_object(old, namespace=namespace)
        assert settings.task_routes == {'a': 'q1'}
        assert settings.broker_url == 'amqp://u:p@h:5672//'


def test_a_new_name_wins_over_its_old_one() -> None:
    conf = {'CELERY_TASK_ROUTES': {'a': 'new'}, 'CELERY_ROUTES': {'a': 'old'}}
    assert Settings().from_object(conf, namespace='CELERY').task_routes == {'a': 'new'}


def test_an_old_name_given_to_update_stands_for_its_new_one() -> None:
    assert Settings(CELERY_DEFAULT_QUEUE='x').task_default_queue == 'x'


def test_an_unimplemented_celery_setting_gets_one_warning_naming_it(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger='pika_rpc.config'):
        settings = Settings(worker_concurrency=8)
        settings.update(worker_concurrency=9)
        settings.copy().update(worker_concurrency=10)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "'worker_concurrency'" in messages[0]
    assert 'does not implement' in messages[0]
    assert settings.worker_concurrency == 9 and 'worker_concurrency' not in dict(settings)


def test_an_old_name_of_an_unimplemented_setting_names_both(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger='pika_rpc.config'):
        Settings(CELERYD_CONCURRENCY=4)
    (record,) = caplog.records
    assert "'CELERYD_CONCURRENCY'" in record.getMessage()
    assert "'worker_concurrency'" in record.getMessage()


def test_reading_an_unimplemented_setting_not_given_gives_celerys_default() -> None:
    settings = Settings()
    assert settings.broker_pool_acquire_timeout is None and settings.worker_concurrency is None
    settings.worker_send_task_events = True
    assert settings.worker_send_task_events is True
    assert 'worker_concurrency' not in dict(settings)


def test_a_name_on_no_list_stays_a_type_error() -> None:
    with pytest.raises(TypeError, match="unknown setting 'task_rotes'.*task_routes"):
        Settings(task_rotes={})
    with pytest.raises(TypeError, match='unknown setting'):
        Settings().update({'CELERY_NOT_A_SETTING': 1})


@pytest.mark.parametrize('bad', [1, object(), [{'a': 'b'}, 3]])
def test_task_routes_refuses_what_celery_cannot_route_with(bad) -> None:
    with pytest.raises(TypeError, match='task_routes'):
        Settings(task_routes=bad)


def test_a_router_is_built_again_when_a_routing_setting_changes() -> None:
    from pika_rpc import App

    app = App('routes', broker='amqp://guest:guest@127.0.0.1:1//')
    assert app._route('t.a', (), {})['queue'].name == 'celery'
    first = app._router[1]
    app._route('t.b', (), {})
    assert app._router[1] is first  # same settings: the same router
    app.conf.update(task_routes={'t.*': {'queue': 'elsewhere'}})
    assert app._route('t.a', (), {})['queue'].name == 'elsewhere'
    assert app._router[1] is not first
